"""POST /v1/predict with fakes around the real route: a raw event gets the vector the features
code computes from its entity's stored state, is scored by the champion and published; refusals."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from driftline.events import envelope
from driftline.projects import Applied, Definition
from driftline.records import PredictionMade, RawEvent
from driftline.service import wired
from driftline_deployment import api
from driftline_deployment.api import DeploymentDeps
from driftline_deployment.config import DeploymentSettings
from driftline_deployment.features import RawEventFeatures
from driftline_deployment.publish import PredictionPublisher
from driftline_deployment.slots import ModelSlots
from driftline_ml.models import to_matrix
from driftline_ml.online import FeatureSets
from tests.fakes import FakeArtifactStore, FakeProducer
from tests.support import ROOT
from tests.unit.deployment import synthetic
from tests.unit.deployment.test_deployment_handlers import canary_promoted, deployer, model, promoted

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def applied() -> Applied:
    definition = Definition.from_file(ROOT / "examples/loan_approval/project.yaml")
    return Applied(definition, 1, "1", "digest", T0, "test")


def payload(entity: str, loan: float) -> dict[str, Any]:
    return {"customer_id": entity, "salary": 60_000.0, "commission": 0.0, "age": 30, "elevel": 1, "car": 2,
            "zipcode": 3, "hvalue": 100_000.0, "hyears": 25, "loan": loan}  # fmt: skip


class App:
    """The route with v1 as champion and, given ``canary``, v2 as the canary serving that share."""

    def __init__(
        self,
        states: dict[str, dict[str, Any]] | None = None,
        fail: Exception | None = None,
        canary: float | None = None,
    ) -> None:
        self.states = states or {}
        self.fail = fail
        self.canary = canary
        self.producer = FakeProducer()
        self.reads: list[list[str]] = []
        self.slots = ModelSlots()

    async def read_states(self, keys: Any) -> dict[str, dict[str, Any]]:
        self.reads.append(list(keys))
        if self.fail is not None:
            raise self.fail
        return {k: self.states[k] for k in keys if k in self.states}

    async def client(self) -> TestClient:
        slots = self.slots
        store = FakeArtifactStore()
        assert await deployer(store, FakeProducer(), slots).apply(promoted(store, model(1), 1))
        if self.canary is not None:
            assert await deployer(store, FakeProducer(), slots).apply(canary_promoted(store, model(2), 2, self.canary))
        raw = RawEventFeatures(self.read_states)
        raw.update([applied()])
        deps = DeploymentDeps(
            settings=DeploymentSettings(),
            model_name=synthetic.MODEL_NAME,
            slots=slots,
            deployer=deployer(store, FakeProducer(), slots),
            raw=raw,
            publisher=PredictionPublisher(self.producer),  # type: ignore[arg-type]
        )
        app = FastAPI()
        app.include_router(api.router)
        app.dependency_overrides[wired] = lambda: deps
        return TestClient(app)


def history_state(entity: str) -> tuple[str, dict[str, Any]]:
    """The state the features code leaves after two events of ``entity`` (what the online store holds)."""
    sets = FeatureSets()
    sets.update([applied()])
    (pf,) = sets.all()
    state = None
    for minute, loan in ((0, 100.0), (5, 300.0)):
        raw = RawEvent(**envelope("t", event_time=T0 + timedelta(minutes=minute)), event_type="loan_application",
                       entity_id=entity, payload=payload(entity, loan), project="loan-approval")  # fmt: skip
        state = pf.compute(raw, state).new_state
    assert state is not None
    return pf.state_key(entity), state


async def test_a_raw_event_is_scored_with_its_entitys_windows_and_published() -> None:
    key, state = history_state("c9")
    app = App({key: state})
    client = await app.client()
    event_id = str(uuid.uuid4())
    event = {"type": "loan_application", "event_id": event_id, "event_time": (T0 + timedelta(minutes=9)).isoformat(),
             "payload": payload("c9", 500.0)}  # fmt: skip
    r = client.post("/v1/predict", json={"event": event})
    assert r.status_code == 200, r.text
    body = r.json()
    (p,) = body["predictions"]
    assert app.reads == [[key]]  # one read of the entity's state
    assert p["features"]["applications_1h"] == 3.0 and p["features"]["loan_mean_1h"] == 300.0
    assert p["features"]["income"] == 60_000.0
    expected = model(1).scores([{f: p["features"][f] for f in synthetic.FEATURES}])
    assert p["score"] == pytest.approx(float(expected[0]), abs=1e-9)
    assert (p["prediction_id"], p["entity_id"]) == (event_id, "c9")
    records = [rec for _, rec, _ in app.producer.sent if isinstance(rec, PredictionMade)]
    (published,) = records
    assert (published.served, published.source_event_id, published.entity_id) == ("http", event_id, "c9")
    assert published.score == p["score"] and published.model_version == body["model_version"] == 1
    assert to_matrix([p["features"]], synthetic.FEATURES).shape == (1, 12)


async def test_a_ready_vector_gets_a_new_prediction_id_that_is_also_its_entity() -> None:
    app = App()
    client = await app.client()
    row = synthetic.generate(1, seed=3)[0][0]
    r = client.post("/v1/predict", json={"features": row})
    assert r.status_code == 200, r.text
    (p,) = r.json()["predictions"]
    assert p["features"] is None and p["prediction_id"] == p["entity_id"]
    assert app.reads == []  # no online-store read for a ready vector
    (published,) = [rec for _, rec, _ in app.producer.sent if isinstance(rec, PredictionMade)]
    assert published.source_event_id == p["prediction_id"] and published.correlation_id == r.json()["request_id"]
    assert np.isclose(published.score, p["score"])


async def test_refusals() -> None:
    client = await App(fail=asyncpg.PostgresError("relation entity_windows does not exist")).client()
    event = {"type": "loan_application", "payload": payload("c1", 1.0)}
    r = client.post("/v1/predict", json={"event": event})
    assert r.status_code == 503 and r.json()["detail"]["error"] == "online_store_unavailable"
    r = client.post(
        "/v1/predict", json={"event": {"type": "loan_application", "payload": {**payload("c1", 1.0), "age": "x"}}}
    )
    assert r.status_code == 422 and r.json()["detail"]["errors"][0]["field"] == "payload.age"
    r = client.post("/v1/predict", json={"event": {"type": "nope", "payload": {}}})
    assert r.status_code == 422 and r.json()["detail"]["errors"][0]["field"] == "type"
    r = client.post("/v1/predict", json={"event": event, "features": {"salary": 1.0}})
    assert r.status_code == 422  # one of event/events/features/instances
