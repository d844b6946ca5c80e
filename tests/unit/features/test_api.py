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
        self.rows = {(r["project"], r["entity_id"], r["feature_set_version"]): r for r in rows}
        self.asked: list[tuple[str, str, str]] = []

    async def latest(self, entity_id: str, feature_set_version: str, project: str = "") -> dict[str, Any] | None:
        self.asked.append((project, entity_id, feature_set_version))
        return self.rows.get((project, entity_id, feature_set_version))


@dataclass
class Deps:
    store: FakeLatest = field(default_factory=FakeLatest)
    versions: dict[str, str] = field(default_factory=lambda: {"loans": "2"})

    def current_versions(self) -> dict[str, str]:
        return self.versions


def row(entity_id: str, version: str, project: str = "loans") -> dict[str, Any]:
    return {
        "project": project,
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
    assert deps.store.asked == [("loans", "c1", "2"), ("loans", "c1", "1")]


def test_with_several_projects_the_project_is_named_and_each_has_its_own_latest_vector() -> None:
    deps = Deps(FakeLatest(row("c1", "2"), row("c1", "1", "machines")), {"loans": "2", "machines": "1"})
    client = app_with(deps)
    unnamed = client.get("/v1/features/c1")
    assert unnamed.status_code == 400 and unnamed.json()["detail"]["error"] == "project_required"
    assert "loans, machines" in unnamed.json()["detail"]["reason"]
    assert client.get("/v1/features/c1", params={"project": "machines"}).json()["event_id"] == "v-c1-1"
    assert client.get("/v1/features/c1", params={"project": "loans"}).json()["event_id"] == "v-c1-2"
    unknown = client.get("/v1/features/c1", params={"project": "nope"})
    assert unknown.status_code == 404 and "no project 'nope'" in unknown.json()["detail"]["reason"]


def test_an_unknown_entity_is_a_404_with_a_reason() -> None:
    r = app_with(Deps()).get("/v1/features/nobody")
    assert r.status_code == 404
    assert r.json()["detail"]["error"] == "not_found" and "'nobody'" in r.json()["detail"]["reason"]


def test_while_starting_the_route_answers_503() -> None:
    r = app_with(None).get("/v1/features/c1")
    assert r.status_code == 503 and r.json()["detail"]["error"] == "starting"


def test_an_empty_version_or_project_is_a_422_not_a_lookup_of_the_unknown_project() -> None:
    # Fuzzing found ?project=%26&version= answered 500: the empty version fell back to the
    # current version of a project the install does not have (a KeyError).
    client = app_with(Deps())
    for params in ({"project": "&", "version": ""}, {"version": ""}, {"project": ""}):
        r = client.get("/v1/features/c1", params=params)
        assert r.status_code == 422, (params, r.text)
    named = client.get("/v1/features/c1", params={"project": "&", "version": "2"})
    assert named.status_code == 404 and "project '&'" in named.json()["detail"]["reason"]
