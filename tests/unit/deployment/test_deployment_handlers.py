"""Deployment's logic with fakes: what a promotion does to the slots, what is reported, how vectors are scored."""

from __future__ import annotations

import asyncio
import os
import signal
from dataclasses import replace
from functools import cache
from typing import Any

import numpy as np
import pytest
from prometheus_client import REGISTRY

from driftline.artifacts import sha256_hex
from driftline.catalog import DEPLOYMENTS_STATUS, FEATURES_VECTORS, MODELS_PROMOTED, PREDICTIONS
from driftline.events import Event, derived_event_id
from driftline.records import FeatureVectorComputed, ModelPromoted, Record
from driftline.retry import PoisonRecord
from driftline_deployment.handlers import Deployer, Scorer
from driftline_deployment.loader import ProcessLoader
from driftline_deployment.policy import CHALLENGER, CHAMPION, plan_from_history
from driftline_deployment.scoring import Scores
from driftline_deployment.slots import ModelSlots
from driftline_ml.models import to_matrix
from tests.fakes import FakeArtifactStore, FakeProducer
from tests.unit.deployment import synthetic
from tests.unit.deployment.synthetic import MODEL_NAME, TrainedModel


@cache
def model(seed: int) -> TrainedModel:
    return synthetic.train(seed=seed, n=600, max_iter=10)


def event(topic: str, record: Record, offset: int) -> Event[Any]:
    """The Event a consumer or the follower hands over for ``record``."""
    return Event(topic, 0, offset, None, record.to_avro(), b"", 1, 0, record)


def replay(history: list[ModelPromoted]) -> list[Event[ModelPromoted]]:
    return [event(MODELS_PROMOTED, p, i) for i, p in enumerate(history)]


def promoted(
    store: FakeArtifactStore, m: TrainedModel, version: int, action: str = "promote", tamper: bool = False
) -> ModelPromoted:
    base = f"models/{MODEL_NAME}/{m.run_id}"
    art = store.add(f"{base}/model.skops", m.artifact)
    meta = store.add_json(f"{base}/metadata.json", m.metadata)
    if tamper:
        store.objects[art.key] = m.artifact[:-1] + b"!"
    refs = {
        "artifact_bucket": store.bucket,
        "artifact_key": art.key,
        "artifact_sha256": art.sha256,
        "metadata_key": meta.key,
        "metadata_sha256": meta.sha256,
    }
    return ModelPromoted.from_avro(synthetic.promotion(m, refs, version, action=action))


def canary_promoted(store: FakeArtifactStore, m: TrainedModel, version: int, fraction: float) -> ModelPromoted:
    """``m`` as the canary ``version`` serving ``fraction`` of the entities."""
    return replace(promoted(store, m, version, action="canary"), traffic_fraction=fraction)


def deployer(store: FakeArtifactStore, producer: FakeProducer, slots: ModelSlots, **kw: Any) -> Deployer:
    return Deployer(
        slots=slots,
        producer=producer,  # type: ignore[arg-type]
        artifacts=lambda bucket: store,  # type: ignore[arg-type,return-value]
        instance_id="i-1",
        default_positive_class="approve",
        **kw,
    )


async def test_a_promotion_loads_swaps_and_reports_with_the_promotion_as_cause() -> None:
    store, producer, slots = FakeArtifactStore(), FakeProducer(), ModelSlots()
    d = deployer(store, producer, slots)
    event = promoted(store, model(1), 1)
    assert await d.apply(event)
    champion = slots.champion(MODEL_NAME)
    assert champion is not None and champion.version == 1 and champion.slot == CHAMPION
    (status,) = producer.on(DEPLOYMENTS_STATUS)
    assert status.status == "loaded" and status.causation_id == event.event_id
    assert status.correlation_id == event.correlation_id and status.instance_id == "i-1"
    assert status.event_id == derived_event_id("deployment-status", event.event_id, "i-1", CHAMPION, "loaded")
    x = np.zeros((2, len(champion.feature_names)))
    scores, classes = champion.predict(x)
    assert list(classes) == ["approve" if s >= 0.5 else "deny" for s in scores]


@pytest.mark.parametrize("failure", ["tampered", "missing", "not_a_model", "unknown_action"])
async def test_a_model_that_fails_to_load_never_replaces_the_working_one(failure: str) -> None:
    store, producer, slots = FakeArtifactStore(), FakeProducer(), ModelSlots()
    d = deployer(store, producer, slots)
    await d.apply(promoted(store, model(1), 1))
    bad = promoted(store, model(2), 2, tamper=failure == "tampered")
    if failure == "missing":
        del store.objects[bad.artifact_key]
    if failure == "not_a_model":
        store.objects[bad.artifact_key] = b"PK not a skops file"
        bad = replace(bad, artifact_sha256=sha256_hex(b"PK not a skops file"))
    if failure == "unknown_action":
        bad = replace(bad, action="replace")
    assert not await d.apply(bad)
    assert slots.champion(MODEL_NAME).version == 1  # type: ignore[union-attr]
    status = producer.on(DEPLOYMENTS_STATUS)[-1]
    assert status.status == "failed" and status.version == 2 and status.reason
    assert d.history[-1].status == "failed"


async def test_shadow_loads_a_challenger_which_leaves_its_slot_when_promoted_and_rollback_is_reported() -> None:
    store, producer, slots = FakeArtifactStore(), FakeProducer(), ModelSlots()
    d = deployer(store, producer, slots)
    await d.apply(promoted(store, model(1), 1))
    await d.apply(promoted(store, model(2), 2, action="shadow"))
    assert slots.challenger(MODEL_NAME).version == 2  # type: ignore[union-attr]
    assert slots.champion(MODEL_NAME).version == 1  # type: ignore[union-attr]
    await d.apply(promoted(store, model(2), 2))
    assert slots.challenger(MODEL_NAME) is None and slots.champion(MODEL_NAME).version == 2  # type: ignore[union-attr]
    await d.apply(promoted(store, model(1), 1, action="rollback"))
    assert slots.champion(MODEL_NAME).version == 1  # type: ignore[union-attr]
    assert [s.status for s in producer.on(DEPLOYMENTS_STATUS)] == [
        "loaded",
        "loaded",
        "loaded",
        "unloaded",
        "rolled_back",
    ]
    slots_reported = [s.slot for s in producer.on(DEPLOYMENTS_STATUS)]
    assert slots_reported == [CHAMPION, CHALLENGER, CHAMPION, CHALLENGER, CHAMPION]
    unloaded = producer.on(DEPLOYMENTS_STATUS)[3]
    assert unloaded.version == 2 and "became the champion" in unloaded.reason


async def test_shadow_can_be_switched_off() -> None:
    store, producer, slots = FakeArtifactStore(), FakeProducer(), ModelSlots()
    d = deployer(store, producer, slots, shadow=False)
    assert not await d.apply(promoted(store, model(2), 2, action="shadow"))
    assert slots.challenger(MODEL_NAME) is None and not producer.sent


def test_the_startup_plan_keeps_the_latest_champion_first_and_the_live_challenger() -> None:
    store = FakeArtifactStore()
    history = [
        promoted(store, model(1), 1),
        promoted(store, model(2), 2, action="shadow"),
        promoted(store, model(2), 2),
        promoted(store, model(3), 3, action="shadow"),
    ]
    plan = plan_from_history(history)[MODEL_NAME]
    assert [p.version for p in plan.champions] == [2, 1]
    challenger = plan.challenger_beside(plan.champions[0])
    assert challenger is not None and challenger.version == 3
    history.append(promoted(store, model(3), 3))
    plan = plan_from_history(history)[MODEL_NAME]
    assert [p.version for p in plan.champions] == [3, 2, 1]
    assert plan.challenger_beside(plan.champions[0]) is None  # promoted
    history += [promoted(store, model(4), 4, action="shadow"), promoted(store, model(5), 5)]
    plan = plan_from_history(history)[MODEL_NAME]
    assert plan.challenger_beside(plan.champions[0]) is None  # superseded by v5
    # Were v5 not to load, v3 would serve, and the v4 challenger promoted after it with it.
    assert plan.challenger_beside(plan.champions[1]) is not None


async def test_startup_falls_back_to_the_previous_champion_when_the_latest_does_not_load() -> None:
    store, producer, slots = FakeArtifactStore(), FakeProducer(), ModelSlots()
    d = deployer(store, producer, slots)
    await d.on_replayed(replay([promoted(store, model(1), 1), promoted(store, model(2), 2, tamper=True)]))
    assert d.replayed and slots.champion(MODEL_NAME).version == 1  # type: ignore[union-attr]
    assert [(s.version, s.status) for s in producer.on(DEPLOYMENTS_STATUS)] == [(2, "failed"), (1, "loaded")]
    assert "start-up" in producer.on(DEPLOYMENTS_STATUS)[-1].reason


async def test_a_restart_does_not_announce_again_what_this_instance_announced() -> None:
    store = FakeArtifactStore()
    promotion = promoted(store, model(1), 1)
    first = FakeProducer()
    await deployer(store, first, ModelSlots()).on_replayed(replay([promotion]))
    statuses = first.on(DEPLOYMENTS_STATUS)
    assert [(s.version, s.status) for s in statuses] == [(1, "loaded")]
    history = replay([promotion]) + [event(DEPLOYMENTS_STATUS, s, 10 + i) for i, s in enumerate(statuses)]

    again, slots = FakeProducer(), ModelSlots()
    restarted = deployer(store, again, slots)
    await restarted.on_replayed(history)
    assert slots.champion(MODEL_NAME).version == 1  # type: ignore[union-attr]  # it serves, as before
    assert not again.on(DEPLOYMENTS_STATUS)
    assert [s.status for s in restarted.history] == ["loaded"]  # still listed as its recent change
    # Another instance has not announced it: it does.
    other = FakeProducer()
    await Deployer(
        slots=ModelSlots(),
        producer=other,  # type: ignore[arg-type]
        artifacts=lambda bucket: store,  # type: ignore[arg-type,return-value]
        instance_id="i-2",
        default_positive_class="approve",
    ).on_replayed(history)
    assert [(s.version, s.status, s.instance_id) for s in other.on(DEPLOYMENTS_STATUS)] == [(1, "loaded", "i-2")]


def vector_event(row: dict[str, Any], i: int) -> Event[FeatureVectorComputed]:
    return event(FEATURES_VECTORS, FeatureVectorComputed.from_avro(synthetic.vector(row, i)), i)


async def test_a_batch_is_scored_by_the_champion_and_the_challenger_in_shadow() -> None:
    store, producer, slots = FakeArtifactStore(), FakeProducer(), ModelSlots()
    d = deployer(store, producer, slots)
    await d.apply(promoted(store, model(1), 1))
    await d.apply(promoted(store, model(2), 2, action="shadow"))
    rows = synthetic.generate(30, seed=3)[0]
    events = [vector_event(r, i) for i, r in enumerate(rows)]
    scorer = Scorer(slots=slots, producer=producer, model_name=MODEL_NAME)  # type: ignore[arg-type]
    await scorer.score_batch(events)
    made = producer.on(PREDICTIONS)
    champion = [p for p in made if p.slot == CHAMPION]
    shadow = [p for p in made if p.slot == CHALLENGER]
    assert len(champion) == len(shadow) == 30
    np.testing.assert_allclose([p.score for p in champion], model(1).scores(rows))
    np.testing.assert_allclose([p.score for p in shadow], model(2).scores(rows))
    assert all(p.shadow for p in shadow) and not any(p.shadow for p in champion)
    first = champion[0]
    assert first.source_event_id == events[0].record.source_event_id
    assert first.causation_id == events[0].event_id and first.correlation_id == events[0].correlation_id
    assert first.event_time == events[0].record.event_time


async def test_vectors_are_not_scored_without_a_model_and_a_bad_vector_is_poison() -> None:
    producer, slots = FakeProducer(), ModelSlots()
    scorer = Scorer(slots=slots, producer=producer, model_name=MODEL_NAME)  # type: ignore[arg-type]
    row = synthetic.generate(1, seed=3)[0][0]
    await scorer.score_batch([vector_event(row, 0)])
    assert not producer.sent
    store = FakeArtifactStore()
    await deployer(store, producer, slots).apply(promoted(store, model(1), 1))
    bad = vector_event({**row, "age": "old"}, 1)
    with pytest.raises(ValueError, match="age"):
        await scorer.score_batch([vector_event(row, 0), bad])
    assert not producer.on(PREDICTIONS)  # nothing of the failed batch was sent
    with pytest.raises(PoisonRecord, match="age"):
        await scorer.score_one(bad.record)
    empty = vector_event({}, 2)
    with pytest.raises(PoisonRecord, match="has no features"):
        await scorer.score_one(empty.record)
    assert not producer.on(PREDICTIONS)


@pytest.mark.parametrize("action", ["promote", "rollback"])
async def test_a_new_champion_clears_the_challenger_it_supersedes_live_and_at_start_up(action: str) -> None:
    store, producer, slots = FakeArtifactStore(), FakeProducer(), ModelSlots()
    d = deployer(store, producer, slots)
    history = [promoted(store, model(1), 1), promoted(store, model(2), 2, action="shadow")]
    for event in history:
        await d.apply(event)
    assert slots.challenger(MODEL_NAME).version == 2  # type: ignore[union-attr]
    history.append(promoted(store, model(3), 3, action=action))
    await d.apply(history[-1])
    assert slots.champion(MODEL_NAME).version == 3 and slots.challenger(MODEL_NAME) is None  # type: ignore[union-attr]
    unloaded = producer.on(DEPLOYMENTS_STATUS)[-1]
    assert (unloaded.slot, unloaded.status, unloaded.version) == (CHALLENGER, "unloaded", 2)
    assert "superseded" in unloaded.reason and unloaded.causation_id == history[-1].event_id
    # No scoring by the stale challenger.
    scorer = Scorer(slots=slots, producer=producer, model_name=MODEL_NAME)  # type: ignore[arg-type]
    await scorer.score_batch([vector_event(synthetic.generate(1, seed=3)[0][0], 0)])
    assert [p.slot for p in producer.on(PREDICTIONS)] == [CHAMPION]
    # A restarted instance ends up the same.
    restarted = ModelSlots()
    await deployer(store, FakeProducer(), restarted).on_replayed(replay(history))
    assert restarted.champion(MODEL_NAME).version == 3 and restarted.challenger(MODEL_NAME) is None  # type: ignore[union-attr]
    # A later shadow promotion fills the slot again.
    await d.apply(promoted(store, model(4), 4, action="shadow"))
    assert slots.challenger(MODEL_NAME).version == 4  # type: ignore[union-attr]


async def test_a_champion_that_fails_to_load_leaves_the_challenger_live_and_at_start_up() -> None:
    store, producer, slots = FakeArtifactStore(), FakeProducer(), ModelSlots()
    d = deployer(store, producer, slots)
    history = [
        promoted(store, model(1), 1),
        promoted(store, model(2), 2, action="shadow"),
        promoted(store, model(3), 3, tamper=True),
    ]
    for event in history:
        await d.apply(event)
    assert slots.champion(MODEL_NAME).version == 1 and slots.challenger(MODEL_NAME).version == 2  # type: ignore[union-attr]
    assert "unloaded" not in [s.status for s in producer.on(DEPLOYMENTS_STATUS)]
    restarted = ModelSlots()
    await deployer(store, FakeProducer(), restarted).on_replayed(replay(history))
    assert restarted.champion(MODEL_NAME).version == 1 and restarted.challenger(MODEL_NAME).version == 2  # type: ignore[union-attr]


class BrokenEstimator:
    """A challenger whose predict fails (a bug in it, a version mismatch of its library, ...)."""

    classes_ = np.array(["deny", "approve"])

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        raise RuntimeError("challenger exploded")


async def test_a_failing_challenger_never_affects_the_champions_predictions() -> None:
    store, producer, slots = FakeArtifactStore(), FakeProducer(), ModelSlots()
    d = deployer(store, producer, slots)
    await d.apply(promoted(store, model(1), 1))
    await d.apply(promoted(store, model(2), 2, action="shadow"))
    challenger = slots.challenger(MODEL_NAME)
    assert challenger is not None
    broken = BrokenEstimator()
    slots.install(replace(challenger, estimator=broken, scores=Scores(broken, challenger.positive_class)))
    labels = {"model": MODEL_NAME, "version": "2"}
    errors = REGISTRY.get_sample_value("driftline_deployment_shadow_errors_total", labels)
    rows = synthetic.generate(20, seed=3)[0]
    events = [vector_event(r, i) for i, r in enumerate(rows)]
    scorer = Scorer(slots=slots, producer=producer, model_name=MODEL_NAME)  # type: ignore[arg-type]
    await scorer.score_batch(events)  # no exception: the batch is not failed
    await scorer.score_one(vector_event(rows[0], 99).record)  # no PoisonRecord: nothing goes to the DLQ
    made = producer.on(PREDICTIONS)
    assert [p.slot for p in made] == [CHAMPION] * 21
    np.testing.assert_allclose([p.score for p in made[:20]], model(1).scores(rows))
    after = REGISTRY.get_sample_value("driftline_deployment_shadow_errors_total", labels)
    assert (after or 0) - (errors or 0) == 2


async def test_the_process_loader_loads_in_a_child_and_reports_its_errors() -> None:
    store, producer, slots = FakeArtifactStore(), FakeProducer(), ModelSlots()
    loader = ProcessLoader()
    try:
        d = deployer(store, producer, slots, loader=loader)
        assert await d.apply(promoted(store, model(1), 1))
        champion = slots.champion(MODEL_NAME)
        assert champion is not None
        rows = synthetic.generate(5, seed=3)[0]
        np.testing.assert_allclose(champion.predict(to_matrix(rows, synthetic.FEATURES))[0], model(1).scores(rows))
        bad = promoted(store, model(2), 2)
        store.objects[bad.artifact_key] = b"PK not a skops file"
        bad = replace(bad, artifact_sha256=sha256_hex(b"PK not a skops file"))
        assert not await d.apply(bad)
        assert slots.champion(MODEL_NAME) is champion
        assert producer.on(DEPLOYMENTS_STATUS)[-1].status == "failed"
        # The child dies (say, a crash on a hostile file): that load fails, the next one gets a new child.
        child = await asyncio.get_running_loop().run_in_executor(loader._executor(), os.getpid)
        assert child != os.getpid()
        os.kill(child, signal.SIGKILL)
        assert not await d.apply(promoted(store, model(3), 3))
        assert "loader process died" in producer.on(DEPLOYMENTS_STATUS)[-1].reason
        assert await d.apply(promoted(store, model(3), 3))
        assert slots.champion(MODEL_NAME).version == 3  # type: ignore[union-attr]
    finally:
        loader.close()


async def test_each_vector_is_scored_by_its_projects_model() -> None:
    from dataclasses import replace

    store, producer, slots = FakeArtifactStore(), FakeProducer(), ModelSlots()
    d = deployer(store, producer, slots)
    await d.apply(replace(promoted(store, model(1), 1), model_name="model-a"))
    await d.apply(replace(promoted(store, model(2), 1), model_name="model-b"))
    rows = synthetic.generate(12, seed=5)[0]
    projects = ["pa", "pb", "gone", "pa"] * 3
    events = [
        event(FEATURES_VECTORS, replace(vector_event(r, i).record, project=p), i)
        for i, (r, p) in enumerate(zip(rows, projects, strict=True))
    ]
    models = {"pa": "model-a", "pb": "model-b"}
    scorer = Scorer(slots=slots, producer=producer, model_of=lambda v: models.get(v.project or ""))  # type: ignore[arg-type]
    await scorer.score_batch(events)
    made = {p.source_event_id: p for p in producer.on(PREDICTIONS)}
    for e, p in zip(events, projects, strict=True):
        got = made.get(e.record.source_event_id)
        assert (got.model_name if got else None) == models.get(p)
    a = [e.record for e, p in zip(events, projects, strict=True) if p == "pa"]
    np.testing.assert_allclose(
        [made[v.source_event_id].score for v in a],
        model(1).scores([rows[i] for i, p in enumerate(projects) if p == "pa"]),
    )


async def test_a_deleted_projects_model_stops_serving_and_is_not_loaded_again_at_start_up() -> None:
    store, producer, slots = FakeArtifactStore(), FakeProducer(), ModelSlots()
    projects = {MODEL_NAME}
    d = deployer(store, producer, slots, serves=lambda name: name in projects)
    history = [promoted(store, model(1), 1), promoted(store, model(2), 2, action="shadow")]
    for p in history:
        await d.apply(p)
    projects.clear()
    await d.on_project_deleted("loans", MODEL_NAME)
    assert slots.champion(MODEL_NAME) is None and slots.challenger(MODEL_NAME) is None
    unloaded = [s for s in producer.on(DEPLOYMENTS_STATUS) if s.status == "unloaded"]
    assert [(s.slot, s.version, s.causation_id) for s in unloaded] == [
        (CHAMPION, 1, history[0].event_id),
        (CHALLENGER, 2, history[1].event_id),
    ]
    assert all("'loans' was deleted" in s.reason for s in unloaded)
    scorer = Scorer(slots=slots, producer=producer, model_name=MODEL_NAME)  # type: ignore[arg-type]
    await scorer.score_batch([vector_event(synthetic.generate(1, seed=3)[0][0], 0)])
    assert producer.on(PREDICTIONS) == []  # nothing serves the deleted project's model
    restarted = ModelSlots()
    await deployer(store, FakeProducer(), restarted, serves=lambda name: name in projects).on_replayed(replay(history))
    assert restarted.models() == []
