"""The canary in deployment, with fakes: it serves exactly the entities the split gives it (on the
stream and over HTTP), falls back to the champion when it cannot score, leaves on its rollback
(announced once), and a restart rebuilds the same slots."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from fastapi import HTTPException
from prometheus_client import REGISTRY

from driftline.canary import in_canary
from driftline.catalog import DEPLOYMENTS_STATUS, FEATURES_VECTORS, PREDICTIONS
from driftline.events import Event, derived_event_id, envelope
from driftline.records import FeatureVectorComputed, ModelPromoted, PredictionMade
from driftline_deployment import api
from driftline_deployment.handlers import Deployer, Scorer
from driftline_deployment.policy import CANARY, CHALLENGER, CHAMPION
from driftline_deployment.scoring import Scores
from driftline_deployment.slots import ModelSlots
from tests.fakes import FakeArtifactStore, FakeProducer
from tests.unit.deployment import synthetic
from tests.unit.deployment.synthetic import MODEL_NAME
from tests.unit.deployment.test_api import App, payload
from tests.unit.deployment.test_deployment_handlers import (
    BrokenEstimator,
    canary_promoted,
    deployer,
    event,
    model,
    promoted,
    replay,
)


def vector_events(n: int, seed: int = 3) -> list[Event[FeatureVectorComputed]]:
    """``n`` vectors, each of its own entity (the split is by entity)."""
    rows = synthetic.generate(n, seed=seed)[0]
    return [
        event(FEATURES_VECTORS, FeatureVectorComputed.from_avro(synthetic.vector(row, i, entity=f"e-{i}")), i)
        for i, row in enumerate(rows)
    ]


async def with_canary(fraction: float, **kw: Any) -> tuple[Deployer, ModelSlots, FakeProducer, FakeArtifactStore]:
    store, producer, slots = FakeArtifactStore(), FakeProducer(), ModelSlots()
    d = deployer(store, producer, slots, **kw)
    assert await d.apply(promoted(store, model(1), 1))
    assert await d.apply(canary_promoted(store, model(2), 2, fraction))
    return d, slots, producer, store


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_the_canary_serves_exactly_the_entities_the_split_picks() -> None:
    _, slots, producer, _ = await with_canary(0.3)
    canary = slots.challenger(MODEL_NAME)
    assert canary is not None and canary.is_canary and canary.traffic_fraction == 0.3
    assert canary.describe()["mode"] == "canary" and canary.describe()["traffic_fraction"] == 0.3
    events = vector_events(80)
    served_before = counter("driftline_deployment_predictions_total", source="stream", slot=CANARY)
    await Scorer(slots=slots, producer=producer, model_name=MODEL_NAME).score_batch(events)  # type: ignore[arg-type]
    made = producer.on(PREDICTIONS)
    assert len(made) == len(events)  # one served prediction per vector: no shadow scoring beside a canary
    picked = {e.record.entity_id for e in events if in_canary(MODEL_NAME, e.record.entity_id, 0.3)}
    assert 0 < len(picked) < len(events)
    for e, p in zip(events, made, strict=True):  # sent in the batch's order
        v = e.record
        assert p.source_event_id == v.source_event_id
        expected = (CANARY, 2) if v.entity_id in picked else (CHAMPION, 1)
        assert (p.slot, p.model_version, p.shadow) == (*expected, False)
        assert p.event_id == derived_event_id(v.source_event_id, MODEL_NAME, p.model_version, p.slot)
    rows = [e.record.features for e in events]
    on_canary = [i for i, e in enumerate(events) if e.record.entity_id in picked]
    on_champion = [i for i in range(len(events)) if i not in on_canary]
    np.testing.assert_allclose([made[i].score for i in on_canary], model(2).scores([rows[i] for i in on_canary]))
    np.testing.assert_allclose([made[i].score for i in on_champion], model(1).scores([rows[i] for i in on_champion]))
    served_after = counter("driftline_deployment_predictions_total", source="stream", slot=CANARY)
    assert served_after - served_before == len(picked)


async def test_a_larger_fraction_only_adds_entities_to_the_canary() -> None:
    events = vector_events(120)
    served: dict[float, set[str]] = {}
    for fraction in (0.2, 0.5, 1.0):
        _, slots, producer, _ = await with_canary(fraction)
        await Scorer(slots=slots, producer=producer, model_name=MODEL_NAME).score_batch(events)  # type: ignore[arg-type]
        served[fraction] = {p.entity_id for p in producer.on(PREDICTIONS) if p.slot == CANARY}
        assert served[fraction] == {
            e.record.entity_id for e in events if in_canary(MODEL_NAME, e.record.entity_id, fraction)
        }
    assert served[0.2] < served[0.5] < served[1.0]
    assert len(served[1.0]) == len(events)  # the whole model's traffic; the champion scores nothing


class ShortEstimator(BrokenEstimator):
    """A canary that answers for fewer rows than it was given."""

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return np.full((max(len(x) - 1, 0), 2), 0.5)


@pytest.mark.parametrize("estimator", [BrokenEstimator, ShortEstimator])
async def test_a_canary_that_cannot_score_leaves_its_rows_to_the_champion(estimator: type) -> None:
    _, slots, producer, _ = await with_canary(0.5)
    canary = slots.challenger(MODEL_NAME)
    assert canary is not None
    broken = estimator()
    slots.install(replace(canary, estimator=broken, scores=Scores(broken, canary.positive_class)))
    errors = counter("driftline_deployment_canary_errors_total", model=MODEL_NAME, version="2")
    events = vector_events(30)
    scorer = Scorer(slots=slots, producer=producer, model_name=MODEL_NAME)  # type: ignore[arg-type]
    await scorer.score_batch(events)  # no exception: the batch is not failed
    assert any(in_canary(MODEL_NAME, e.record.entity_id, 0.5) for e in events)
    made = producer.on(PREDICTIONS)
    assert [(p.slot, p.model_version) for p in made] == [(CHAMPION, 1)] * len(events)
    np.testing.assert_allclose([p.score for p in made], model(1).scores([e.record.features for e in events]))
    after = counter("driftline_deployment_canary_errors_total", model=MODEL_NAME, version="2")
    assert after - errors == 1


async def test_a_canary_loads_and_serves_with_shadow_scoring_off() -> None:
    _, slots, producer, _ = await with_canary(1.0, shadow=False)
    assert slots.challenger(MODEL_NAME).is_canary  # type: ignore[union-attr]
    scorer = Scorer(slots=slots, producer=producer, model_name=MODEL_NAME, shadow=False)  # type: ignore[arg-type]
    await scorer.score_batch(vector_events(5))
    assert [p.slot for p in producer.on(PREDICTIONS)] == [CANARY] * 5


async def test_a_canary_promotion_without_a_valid_fraction_is_refused() -> None:
    store, producer, slots = FakeArtifactStore(), FakeProducer(), ModelSlots()
    d = deployer(store, producer, slots)
    assert await d.apply(promoted(store, model(1), 1))
    assert not await d.apply(promoted(store, model(2), 2, action="canary"))  # no traffic_fraction
    assert not await d.apply(canary_promoted(store, model(2), 2, 1.5))
    assert slots.challenger(MODEL_NAME) is None
    assert [(s.slot, s.status) for s in producer.on(DEPLOYMENTS_STATUS)][1:] == [(CHALLENGER, "failed")] * 2


def rollback(canary: ModelPromoted, version: int | None = None) -> ModelPromoted:
    return ModelPromoted.from_avro(
        {
            **canary.to_avro(),
            **envelope("test-registry"),
            "version": canary.version if version is None else version,
            "action": "canary_rollback",
            "reason": "canary verdict champion_better",
            "traffic_fraction": None,
        }
    )


async def test_a_canary_rollback_empties_the_slot_and_is_announced_once() -> None:
    store, producer, slots = FakeArtifactStore(), FakeProducer(), ModelSlots()
    d = deployer(store, producer, slots)
    champion, canary = promoted(store, model(1), 1), canary_promoted(store, model(2), 2, 0.5)
    for p in (champion, canary):
        assert await d.apply(p)
    gauge = {"model": MODEL_NAME, "slot": CHALLENGER}
    assert REGISTRY.get_sample_value("driftline_deployment_model_version", gauge) == 2
    # A rollback of a version the slot does not hold: nothing to withdraw, nothing announced.
    assert not await d.apply(rollback(canary, version=7))
    assert slots.challenger(MODEL_NAME) is not None and len(producer.on(DEPLOYMENTS_STATUS)) == 2
    withdrawn = rollback(canary)
    assert await d.apply(withdrawn)
    assert slots.challenger(MODEL_NAME) is None and slots.champion(MODEL_NAME).version == 1  # type: ignore[union-attr]
    assert REGISTRY.get_sample_value("driftline_deployment_model_version", gauge) is None
    status = producer.on(DEPLOYMENTS_STATUS)[-1]
    assert (status.slot, status.status, status.version) == (CHALLENGER, "rolled_back", 2)
    assert status.causation_id == withdrawn.event_id and "canary v2" in status.reason
    assert status.event_id == derived_event_id(
        "deployment-status", withdrawn.event_id, "i-1", CHALLENGER, "rolled_back"
    )
    assert not await d.apply(withdrawn)  # delivered again: the slot is empty, nothing announced
    assert [s.status for s in producer.on(DEPLOYMENTS_STATUS)] == ["loaded", "loaded", "rolled_back"]
    # The champion serves every entity again.
    await Scorer(slots=slots, producer=producer, model_name=MODEL_NAME).score_batch(vector_events(10))  # type: ignore[arg-type]
    assert {(p.slot, p.model_version) for p in producer.on(PREDICTIONS)} == {(CHAMPION, 1)}
    # A restart replaying the promotions and this instance's statuses: same slots, nothing announced.
    history = replay([champion, canary, withdrawn])
    history += [event(DEPLOYMENTS_STATUS, s, 10 + i) for i, s in enumerate(producer.on(DEPLOYMENTS_STATUS))]
    again, restarted = FakeProducer(), ModelSlots()
    await deployer(store, again, restarted).on_replayed(history)
    assert restarted.champion(MODEL_NAME).version == 1 and restarted.challenger(MODEL_NAME) is None  # type: ignore[union-attr]
    assert not again.on(DEPLOYMENTS_STATUS)


async def test_startup_loads_a_canary_with_its_fraction_until_it_is_rolled_back() -> None:
    store = FakeArtifactStore()
    champion, canary = promoted(store, model(1), 1), canary_promoted(store, model(2), 2, 0.25)
    producer, slots = FakeProducer(), ModelSlots()
    await deployer(store, producer, slots).on_replayed(replay([champion, canary]))
    loaded = slots.challenger(MODEL_NAME)
    assert loaded is not None and loaded.version == 2 and loaded.is_canary and loaded.traffic_fraction == 0.25
    assert [(s.slot, s.status) for s in producer.on(DEPLOYMENTS_STATUS)] == [
        (CHAMPION, "loaded"),
        (CHALLENGER, "loaded"),
    ]
    # With shadow scoring off, a canary still loads at start-up (as live).
    off = ModelSlots()
    await deployer(store, FakeProducer(), off, shadow=False).on_replayed(replay([champion, canary]))
    assert off.challenger(MODEL_NAME).is_canary  # type: ignore[union-attr]
    producer, slots = FakeProducer(), ModelSlots()
    await deployer(store, producer, slots).on_replayed(replay([champion, canary, rollback(canary)]))
    assert slots.champion(MODEL_NAME).version == 1 and slots.challenger(MODEL_NAME) is None  # type: ignore[union-attr]
    assert [(s.slot, s.status) for s in producer.on(DEPLOYMENTS_STATUS)] == [(CHAMPION, "loaded")]


# -- POST /v1/predict -------------------------------------------------------------------------


def published(app: App) -> list[PredictionMade]:
    return [rec for _, rec, _ in app.producer.sent if isinstance(rec, PredictionMade)]


async def test_http_ready_vectors_are_split_by_their_prediction_id() -> None:
    app = App(canary=0.5)
    client = await app.client()
    rows = synthetic.generate(40, seed=4)[0]
    r = client.post("/v1/predict", json={"instances": rows})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_version"] == 1  # the champion's
    answers = body["predictions"]
    slots = [(p["slot"], p["model_version"]) for p in answers]
    assert {("canary", 2), ("champion", 1)} == set(slots)
    for row, p in zip(rows, answers, strict=True):
        on_canary = in_canary(MODEL_NAME, p["prediction_id"], 0.5)
        assert (p["slot"], p["model_version"]) == (("canary", 2) if on_canary else ("champion", 1))
        assert p["score"] == pytest.approx(float(model(p["model_version"]).scores([row])[0]), abs=1e-9)
    records = {rec.source_event_id: rec for rec in published(app)}
    assert len(records) == len(answers)
    for p in answers:
        rec = records[p["prediction_id"]]
        assert (rec.slot, rec.model_version, rec.shadow) == (p["slot"], p["model_version"], False)
        assert rec.event_id == derived_event_id(p["prediction_id"], MODEL_NAME, rec.model_version, rec.slot, "http")


async def test_http_raw_events_are_split_by_their_entity() -> None:
    app = App(canary=0.5)
    client = await app.client()
    entities = [f"c{i}" for i in range(24)]
    events = [{"type": "loan_application", "payload": payload(e, 100.0 * (i + 1))} for i, e in enumerate(entities)]
    r = client.post("/v1/predict", json={"events": events})
    assert r.status_code == 200, r.text
    answers = r.json()["predictions"]
    assert [p["entity_id"] for p in answers] == entities
    for p in answers:
        on_canary = in_canary(MODEL_NAME, p["entity_id"], 0.5)
        assert (p["slot"], p["model_version"]) == (("canary", 2) if on_canary else ("champion", 1))
        scored = model(p["model_version"]).scores([{f: p["features"][f] for f in synthetic.FEATURES}])
        assert p["score"] == pytest.approx(float(scored[0]), abs=1e-9)
    assert {p["slot"] for p in answers} == {"canary", "champion"}
    assert {(rec.entity_id, rec.slot, rec.shadow) for rec in published(app)} == {
        (p["entity_id"], p["slot"], False) for p in answers
    }


async def test_http_a_failing_canary_leaves_its_rows_to_the_champion() -> None:
    app = App(canary=1.0)
    client = await app.client()
    canary = app.slots.challenger(MODEL_NAME)
    assert canary is not None
    broken = BrokenEstimator()
    app.slots.install(replace(canary, estimator=broken, scores=Scores(broken, canary.positive_class)))
    errors = counter("driftline_deployment_canary_errors_total", model=MODEL_NAME, version="2")
    rows = synthetic.generate(5, seed=4)[0]
    r = client.post("/v1/predict", json={"instances": rows})
    assert r.status_code == 200, r.text
    answers = r.json()["predictions"]
    assert [(p["slot"], p["model_version"]) for p in answers] == [("champion", 1)] * 5
    np.testing.assert_allclose([p["score"] for p in answers], model(1).scores(rows))
    assert {rec.slot for rec in published(app)} == {"champion"}
    assert counter("driftline_deployment_canary_errors_total", model=MODEL_NAME, version="2") - errors == 1
    r = client.get("/v1/deployment")
    challenger = r.json()["models"][MODEL_NAME]["challenger"]
    assert (challenger["mode"], challenger["traffic_fraction"]) == ("canary", 1.0)
    assert r.json()["models"][MODEL_NAME]["champion"]["mode"] == "champion"


async def test_ready_vectors_are_checked_against_the_model_that_scores_them() -> None:
    app = App(canary=1.0)
    await app.client()
    champion, canary = app.slots.champion(MODEL_NAME), app.slots.challenger(MODEL_NAME)
    assert champion is not None and canary is not None
    canary = replace(canary, feature_names=(*canary.feature_names, "new_feature"))
    row: dict[str, Any] = dict.fromkeys(champion.feature_names, 1.0)
    api.check_rows([row, row], champion, canary, picked=[])
    with pytest.raises(HTTPException) as refused:
        api.check_rows([row, row], champion, canary, picked=[1])
    assert refused.value.status_code == 422
    assert refused.value.detail["missing"] == ["new_feature"] and "row 1" in refused.value.detail["reason"]  # type: ignore[index]
    api.check_rows([row, {**row, "new_feature": None}], champion, canary, picked=[1])
