"""The online-store route in process: it reaches the store and the version through Depends(wired)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient

from driftline_features.api import router

T0 = datetime(2025, 1, 1, 10, 0, tzinfo=UTC)


class FakeLatest:
    def __init__(self, *rows: dict[str, Any]) -> None:
        self.rows = {(r["entity_id"], r["feature_set_version"]): r for r in rows}
        self.asked: list[tuple[str, str]] = []

    async def latest(self, entity_id: str, feature_set_version: str) -> dict[str, Any] | None:
        self.asked.append((entity_id, feature_set_version))
        return self.rows.get((entity_id, feature_set_version))


@dataclass
class Deps:
    store: FakeLatest = field(default_factory=FakeLatest)
    feature_set_version: str = "2"


def row(entity_id: str, version: str) -> dict[str, Any]:
    return {
        "entity_id": entity_id,
        "feature_set_version": version,
        "event_id": f"v-{entity_id}-{version}",
        "source_event_id": f"r-{entity_id}",
        "event_time": T0,
        "features": {"income": 1.0, "kind": "a", "n_1h": None},
        "late": False,
        "correlation_id": "c",
        "updated_at": T0,
    }


def app_with(deps: Deps | None) -> TestClient:
    app = FastAPI()
    app.include_router(router)
    if deps is not None:
        app.state.deps = deps
    return TestClient(app)


def test_latest_vector_of_the_current_version_or_the_asked_one() -> None:
    deps = Deps(FakeLatest(row("c1", "2"), row("c1", "1")))
    client = app_with(deps)
    r = client.get("/v1/features/c1")
    assert r.status_code == 200
    assert r.json()["event_id"] == "v-c1-2" and r.json()["features"] == {"income": 1.0, "kind": "a", "n_1h": None}
    assert client.get("/v1/features/c1", params={"version": "1"}).json()["event_id"] == "v-c1-1"
    assert deps.store.asked == [("c1", "2"), ("c1", "1")]


def test_an_unknown_entity_is_a_404_with_a_reason() -> None:
    r = app_with(Deps()).get("/v1/features/nobody")
    assert r.status_code == 404
    assert r.json()["detail"]["error"] == "not_found" and "'nobody'" in r.json()["detail"]["reason"]


def test_while_starting_the_route_answers_503() -> None:
    r = app_with(None).get("/v1/features/c1")
    assert r.status_code == 503 and r.json()["detail"]["error"] == "starting"
