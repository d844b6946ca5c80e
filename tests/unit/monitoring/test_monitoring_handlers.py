"""Monitoring's logic on synthetic streams, with an in-memory store and producer: a stationary
stream raises nothing, a covariate shift raises one input-drift event naming the shifted feature,
a concept change raises a performance-drift event, and episodes publish once."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from datetime import datetime
from functools import cache
from typing import Any

import pytest

from driftline.catalog import DEPLOYMENTS_STATUS, FEATURES_VECTORS, LABELS, MODELS_PROMOTED, PREDICTIONS
from driftline.events import Event, envelope
from driftline.project import DriftPolicy, load_project
from driftline.records import (
    DeploymentStatusChanged,
    DriftDetected,
    FeatureVectorComputed,
    LabelRecorded,
    ModelPromoted,
    ModelRejected,
    PredictionMade,
    Record,
)
from driftline_monitoring.api import models_view
from driftline_monitoring.drift import PerformanceTracker
from driftline_monitoring.episodes import Episodes, WindowSummary
from driftline_monitoring.handlers import Monitoring, in_offset_order
from driftline_monitoring.store import OpenReport
from tests.fakes import FakeArtifactStore, FakeProducer
from tests.unit.deployment import synthetic
from tests.unit.deployment.synthetic import MODEL_NAME, TrainedModel

POLICY = load_project().drift  # the shipped example's policy: what the tests calibrate against


@cache
def model(seed: int = 1) -> TrainedModel:
    return synthetic.train(seed=seed, n=3000, max_iter=40)


class FakeStore:
    def __init__(self) -> None:
        self.summaries: list[WindowSummary] = []
        self.reports: dict[str, dict[str, Any]] = {}  # episode id → {record, resolved, published, last_seen_at}
        self.touches = 0
        self.attempts: list[DriftDetected] = []  # further attempts of episodes
        self.published_attempts: set[tuple[str, int]] = set()

    async def save_summary(self, summary: WindowSummary) -> None:
        self.summaries.append(summary)

    async def open_episode(self, record: DriftDetected) -> bool:
        if any(r["record"].model_name == record.model_name and r["resolved"] is None for r in self.reports.values()):
            return False
        self.reports[record.episode_id] = {"record": record, "resolved": None, "published": False}
        return True

    async def open_episode_of(self, model_name: str) -> OpenReport | None:
        for r in self.reports.values():
            record: DriftDetected = r["record"]
            if record.model_name == model_name and r["resolved"] is None:
                attempts = [a for a in self.attempts if a.episode_id == record.episode_id]
                return OpenReport(
                    record.episode_id,
                    record.model_version,
                    record.kind,
                    onset=record.onset,
                    attempts=max([1, *(a.attempt for a in attempts)]),
                    consolidated_to=max(
                        [0, *(a.labelled_since_onset or 0 for a in attempts if a.reason == "consolidation")]
                    ),
                )
        return None

    async def save_attempt(self, record: DriftDetected) -> None:
        if not any(a.episode_id == record.episode_id and a.attempt == record.attempt for a in self.attempts):
            self.attempts.append(record)

    async def unpublished(self) -> list[DriftDetected]:
        return [r["record"] for r in self.reports.values() if not r["published"]] + [
            a for a in self.attempts if (a.episode_id, a.attempt) not in self.published_attempts
        ]

    async def mark_published(self, episode_id: str, attempt: int = 1) -> None:
        if attempt == 1:
            self.reports[episode_id]["published"] = True
        else:
            self.published_attempts.add((episode_id, attempt))

    async def touch(self, episode_id: str, seen_at: datetime | None = None) -> None:
        self.touches += 1
        self.reports[episode_id]["last_seen_at"] = seen_at

    async def resolve(self, episode_id: str, resolution: str) -> None:
        self.reports[episode_id]["resolved"] = resolution

    async def models(self) -> list[str]:
        return sorted({r["record"].model_name for r in self.reports.values()})


TOPICS: dict[type[Record], str] = {
    FeatureVectorComputed: FEATURES_VECTORS,
    PredictionMade: PREDICTIONS,
    LabelRecorded: LABELS,
    ModelPromoted: MODELS_PROMOTED,
    DeploymentStatusChanged: DEPLOYMENTS_STATUS,
}


def ev(record: Record, offset: int = 0) -> Event[Any]:
    """The event a consumer reads for ``record`` (on the topic of its type)."""
    return Event(TOPICS[type(record)], 0, offset, None, record.to_avro(), b"", 1, 0, record=record)


ARTIFACTS = FakeArtifactStore()  # metadata documents by key, shared by every Monitoring of a test


def promotion(m: TrainedModel, version: int, action: str = "promote") -> ModelPromoted:
    """A models.promoted record of ``m`` as ``version``, its metadata document in ARTIFACTS."""
    meta = ARTIFACTS.add_json(f"meta-{version}", m.metadata)
    refs = {
        "artifact_bucket": ARTIFACTS.bucket,
        "artifact_key": "a",
        "artifact_sha256": "x",
        "metadata_key": meta.key,
        "metadata_sha256": meta.sha256,
    }
    return ModelPromoted.from_avro(synthetic.promotion(m, refs, version, action=action))


def deployment_status(promoted: ModelPromoted, status: str, slot: str = "champion") -> DeploymentStatusChanged:
    """What a deployment instance reports about a promotion (deployments.status)."""
    return DeploymentStatusChanged(
        **envelope("test-deployment", cause=promoted),
        model_name=promoted.model_name,
        version=promoted.version,
        slot=slot,
        status=status,
        reason=f"test {status}",
        instance_id="d-1",
        load_seconds=0.1,
    )


def producer_of(mon: Monitoring) -> FakeProducer:
    producer = mon.episodes.producer
    assert isinstance(producer, FakeProducer)
    return producer


async def monitoring_of(
    m: TrainedModel,
    version: int = 1,
    policy: DriftPolicy = POLICY,
    store: FakeStore | None = None,
    history: Sequence[ModelPromoted | DeploymentStatusChanged] | None = None,
) -> tuple[Monitoring, FakeProducer, FakeStore]:
    producer, store = FakeProducer(), store or FakeStore()
    episodes = Episodes(store, producer)  # type: ignore[arg-type]
    mon = Monitoring(policy=policy, episodes=episodes, artifacts=lambda bucket: ARTIFACTS)  # type: ignore[arg-type,return-value]
    records = history if history is not None else [promotion(m, version)]
    await mon.on_replayed([ev(r, i) for i, r in enumerate(records)])
    return mon, producer, store


async def consume(mon: Monitoring, *records: FeatureVectorComputed | PredictionMade | LabelRecorded) -> None:
    """One batch of the consumer group, routed as ``service.wire`` routes it."""
    routes = {FEATURES_VECTORS: mon.on_vector, PREDICTIONS: mon.on_prediction, LABELS: mon.on_label}
    await in_offset_order(routes)([ev(r) for r in records])


async def stream(
    mon: Monitoring,
    m: TrainedModel,
    rows: list[dict[str, float]],
    labels: list[str] | None,
    *,
    start: int = 0,
    version: int = 1,
) -> int | None:
    """Feed vectors, champion predictions and labels; the index of the first drift event, if any."""
    producer = producer_of(mon)
    before = len(producer.records(DriftDetected))
    first = None
    scores = m.scores(rows)
    for i, row in enumerate(rows):
        vec = synthetic.vector(row, start + i)
        batch: list[FeatureVectorComputed | PredictionMade | LabelRecorded] = [
            FeatureVectorComputed.from_avro(vec),
            PredictionMade.from_avro(synthetic.prediction(vec, float(scores[i]), version)),
        ]
        if labels is not None:
            batch.append(LabelRecorded.from_avro(synthetic.label(vec, labels[i])))
        await consume(mon, *batch)
        if first is None and len(producer.records(DriftDetected)) > before:
            first = i
    return first


@pytest.mark.parametrize("seed", [11, 12, 13])
async def test_a_stationary_stream_raises_no_drift(seed: int) -> None:
    mon, producer, store = await monitoring_of(model())
    rows, labels = synthetic.generate(3000, seed)
    assert await stream(mon, model(), rows, labels) is None
    assert producer.records(DriftDetected) == []
    assert len(store.summaries) == (3000 - POLICY.min_window) // POLICY.check_every + 1
    last = store.summaries[-1]
    assert set(last.features) == set(synthetic.FEATURES) and not last.drifted
    assert last.performance["labelled"] == POLICY.performance_window
    assert last.score is not None and last.score["window_size"] == POLICY.window


async def test_a_covariate_shift_raises_one_input_drift_event_naming_the_feature() -> None:
    mon, producer, store = await monitoring_of(model())
    rows, labels = synthetic.generate(1500, 21)
    assert await stream(mon, model(), rows, labels) is None
    shifted, shifted_labels = synthetic.generate(1500, 22, salary_scale=1.6)
    delay = await stream(mon, model(), shifted, shifted_labels, start=1500)
    assert delay is not None and delay < POLICY.window
    # One episode, one detection, although every later check drifts too; the accuracy holds, so its
    # only further requests are consolidations as the post-drift labelled set grows.
    drift, *further = producer.records(DriftDetected)
    assert drift.attempt == 1 and {a.reason for a in further} <= {"consolidation"}
    assert drift.kind == "input" and "salary" in drift.features
    assert {"age", "car", "elevel", "zipcode", "loan", "hyears", "hvalue"}.isdisjoint(drift.features)
    assert drift.correlation_id == drift.event_id and drift.causation_id is None
    assert drift.model_name == MODEL_NAME and drift.model_version == 1
    assert drift.statistic > drift.threshold and drift.method in ("psi", "ks")
    salary = [e for e in drift.evidence if e.feature == "salary"]
    assert {e.method for e in salary} == {"psi", "ks"} and any(e.drifted for e in salary)
    assert drift.window_size == POLICY.window
    assert sum(s.drifted for s in store.summaries) > 5  # the later checks drifted: same episode
    print(f"\ncovariate shift detected {delay} records after it started")


def rejecting_every_candidate(mon: Monitoring) -> None:
    """Each drift.detected is followed at once by its run's candidate being rejected (a fast
    training run and a registry that keeps the champion): the outcome the episode waits for."""
    episodes = mon.episodes
    publish = episodes._publish

    async def publish_then_reject(record: DriftDetected) -> None:
        await publish(record)
        await mon.on_run_outcome(
            ModelRejected(
                **envelope("registry", correlation_id=record.correlation_id),
                model_name=record.model_name,
                version=99,
                run_id="run",
                reason="not better",
                metric="accuracy",
                candidate_value=0.5,
                margin=0.0,
                floor=0.6,
            )
        )

    episodes._publish = publish_then_reject  # type: ignore[method-assign]


async def test_a_concept_change_raises_a_performance_drift_event() -> None:
    mon, producer, _ = await monitoring_of(model())
    rejecting_every_candidate(mon)
    rows, labels = synthetic.generate(1200, 31)
    assert await stream(mon, model(), rows, labels) is None
    rows, labels = synthetic.generate(1500, 32, concept="b")  # same inputs, new labelling
    delay = await stream(mon, model(), rows, labels, start=1200)
    assert delay is not None
    drift, *attempts = producer.records(DriftDetected)
    assert drift.attempt == 1 and drift.reason == "detected"
    assert drift.kind == "performance" and drift.features == ()
    assert drift.method in ("accuracy_drop", "page_hinkley", "adwin")
    assert {e.method for e in drift.evidence} == {"accuracy_drop", "page_hinkley", "adwin"}
    assert drift.onset is not None and drift.window_start <= drift.onset <= drift.window_end
    print(f"\nconcept change detected {delay} labelled predictions after it started ({drift.method})")
    # Every candidate is rejected, so served performance stays degraded: the episode asks again,
    # in its chain, once the last candidate's outcome is known and spaced by
    # retry_after_labels x retry_growth^(k-2) new labelled outcomes, up to max_attempts.
    policy = POLICY
    assert [a.attempt for a in attempts] == list(range(2, len(attempts) + 2))
    assert 3 <= len(attempts) + 1 <= policy.max_attempts
    assert {(a.episode_id, a.reason, a.correlation_id) for a in attempts} == {
        (drift.episode_id, "still_degraded", drift.event_id)
    }
    counts = [drift.labelled_since_onset or 0] + [a.labelled_since_onset or 0 for a in attempts]
    for k, (before, after) in enumerate(itertools.pairwise(counts), start=1):
        assert after - before >= math.ceil(policy.retry_after_labels * policy.retry_growth ** (k - 1))
    assert all(a.statistic > a.threshold for a in attempts)  # the accuracy drop beyond the guard


def opened(producer: FakeProducer) -> list[DriftDetected]:
    """The detections that opened episodes (attempt 1), not their further requests."""
    return [r for r in producer.records(DriftDetected) if r.attempt == 1]


async def test_an_episode_resolves_after_clean_checks_and_a_new_drift_opens_a_new_one() -> None:
    mon, producer, store = await monitoring_of(model())
    await stream(mon, model(), *synthetic.generate(600, 41))
    await stream(mon, model(), *synthetic.generate(900, 42, salary_scale=1.6), start=600)
    assert len(opened(producer)) == 1
    episode = opened(producer)[0].episode_id
    # Back to normal: once the window holds normal data again, three clean checks resolve it.
    await stream(mon, model(), *synthetic.generate(1200, 43), start=1500)
    assert store.reports[episode]["resolved"] == "back_to_normal" and len(opened(producer)) == 1
    await stream(mon, model(), *synthetic.generate(900, 44, salary_scale=0.5), start=2700)
    assert len(opened(producer)) == 2 and opened(producer)[1].episode_id != episode


@pytest.mark.parametrize("evidence", ["prediction", "deployment_status"])
async def test_a_new_champion_seen_serving_resets_the_windows_and_inherits_the_episode(evidence: str) -> None:
    mon, producer, store = await monitoring_of(model())
    await stream(mon, model(), *synthetic.generate(600, 51))
    await stream(mon, model(), *synthetic.generate(700, 52, salary_scale=1.6), start=600)
    (first,) = producer.records(DriftDetected)
    v2 = promotion(model(2), 2)
    await mon.on_promoted(v2)
    # Announced, not yet serving: the monitor and the episode stay.
    assert mon.monitors[MODEL_NAME].reference.version == 1
    assert store.reports[first.episode_id]["resolved"] is None
    rows = synthetic.generate(50, 53)[0]
    if evidence == "prediction":  # the first champion prediction of v2 (deployment swapped)
        await stream(mon, model(2), rows[:1], None, start=2000, version=2)
    else:
        await mon.on_deployment_status(deployment_status(v2, "loaded"))
    # The episode goes on with the new champion: it ends when served performance is back.
    assert store.reports[first.episode_id]["resolved"] is None
    monitor = mon.monitors[MODEL_NAME]
    assert monitor.episode is not None and monitor.episode.episode_id == first.episode_id
    assert monitor.reference.version == 2 and len(monitor.vectors) <= 1
    assert len(monitor.scores) == (1 if evidence == "prediction" else 0)  # that prediction counts, for v2
    # Predictions of the old version (in flight at the swap) are not the champion's any more.
    before = len(monitor.scores)
    await stream(mon, model(1), rows[1:], None, start=2001, version=1)
    assert mon.monitors[MODEL_NAME] is monitor and len(monitor.scores) == before


@pytest.mark.parametrize("restart", [False, True])
async def test_a_refused_promotion_leaves_the_monitor_and_its_episode_as_they_are(restart: bool) -> None:
    v1 = promotion(model(), 1)
    mon, producer, store = await monitoring_of(model(), history=[v1, deployment_status(v1, "loaded")])
    await stream(mon, model(), *synthetic.generate(600, 81))
    await stream(mon, model(), *synthetic.generate(700, 82, salary_scale=1.6), start=600)
    (drift,) = producer.records(DriftDetected)
    monitor = mon.monitors[MODEL_NAME]
    # v2 is promoted, but deployment refuses it (say its artifact fails the digest): v1 serves on.
    v2 = promotion(model(2), 2)
    refused = deployment_status(v2, "failed")
    if restart:  # the same, seen by an instance starting after it happened
        mon, producer, _ = await monitoring_of(
            model(), store=store, history=[v1, deployment_status(v1, "loaded"), v2, refused]
        )
        monitor = mon.monitors[MODEL_NAME]
    else:
        await mon.on_promoted(v2)
        await mon.on_deployment_status(refused)
    assert mon.monitors[MODEL_NAME] is monitor and monitor.reference.version == 1
    assert models_view(mon)[0]["pending_versions"] == [2]
    assert store.reports[drift.episode_id]["resolved"] is None
    assert monitor.episode is not None and monitor.episode.episode_id == drift.episode_id
    # The predictions of the model actually serving still count, and the drift goes on in the same episode.
    scores, seen = len(monitor.scores), monitor.records_seen
    await stream(mon, model(), *synthetic.generate(300, 83, salary_scale=1.6), start=1300)
    assert len(monitor.scores) == min(POLICY.window, scores + 300) and monitor.records_seen == seen + 300
    assert monitor.performance.total > 0 and producer.records(DriftDetected) == ([] if restart else [drift])
    assert store.reports[drift.episode_id]["resolved"] is None


async def test_a_deployment_status_read_before_its_promotion_still_switches() -> None:
    mon, _, _ = await monitoring_of(model())
    v2 = promotion(model(2), 2)
    await mon.on_deployment_status(deployment_status(v2, "loaded"))  # two topics: no order between them
    assert mon.monitors[MODEL_NAME].reference.version == 1
    await mon.on_promoted(v2)
    assert mon.monitors[MODEL_NAME].reference.version == 2


async def test_at_start_up_the_monitor_follows_the_latest_serving_status() -> None:
    v1, v2, v3 = promotion(model(), 1), promotion(model(2), 2), promotion(model(), 3, action="rollback")
    history = [v1, deployment_status(v1, "loaded"), v2, deployment_status(v2, "loaded"), v3]
    mon, _, _ = await monitoring_of(model(), history=history)
    assert mon.monitors[MODEL_NAME].reference.version == 2  # v3 announced, not (yet) served
    mon, _, _ = await monitoring_of(model(), history=[*history, deployment_status(v3, "rolled_back")])
    assert mon.monitors[MODEL_NAME].reference.version == 3
    mon, _, _ = await monitoring_of(model(), history=[v1, v2])  # deployment never reported: the latest
    assert mon.monitors[MODEL_NAME].reference.version == 2


async def test_an_open_performance_episode_costs_o_features_per_label(monkeypatch: pytest.MonkeyPatch) -> None:
    onsets = 0
    change_point_ms = PerformanceTracker.change_point_ms

    def counted(self: PerformanceTracker, margin: int = 10) -> int:
        nonlocal onsets
        onsets += 1
        return change_point_ms(self, margin)

    monkeypatch.setattr(PerformanceTracker, "change_point_ms", counted)
    mon, producer, store = await monitoring_of(model())
    await stream(mon, model(), *synthetic.generate(1200, 31))
    rows, labels = synthetic.generate(1500, 32, concept="b")
    await stream(mon, model(), rows, labels, start=1200)
    drift = producer.records(DriftDetected)[0]  # the others are its further attempts
    assert drift.kind == "performance" and drift.onset is not None
    drifted_labels = mon.monitors[MODEL_NAME].performance.total  # most of the 1500 labels after the change
    assert onsets == 1  # the onset of the one published detection, not one per label while drifted
    # The open episode is refreshed in the database at most once per check (and per touch_every_s),
    # not at every label: 1500 vectors are 15 checks.
    checks = 1500 // POLICY.check_every + 1
    assert 1 <= store.touches <= checks, (store.touches, drifted_labels)
    assert store.reports[drift.episode_id]["last_seen_at"] is not None


async def test_labels_join_predictions_in_either_order_and_only_once() -> None:
    mon, _, _ = await monitoring_of(model())
    monitor = mon.monitors[MODEL_NAME]
    rows, _ = synthetic.generate(4, 61)
    vecs = [synthetic.vector(r, i) for i, r in enumerate(rows)]
    preds = [PredictionMade.from_avro(synthetic.prediction(v, 0.9, 1)) for v in vecs]
    shadow = PredictionMade.from_avro(synthetic.prediction(vecs[3], 0.9, 1, shadow=True))

    def label(i: int, value: str) -> LabelRecorded:
        return LabelRecorded.from_avro(synthetic.label(vecs[i], value))

    await consume(mon, label(0, "approve"))  # label first
    await consume(mon, preds[0])
    await consume(mon, preds[1])  # prediction first
    await consume(mon, label(1, "deny"))
    await consume(mon, preds[1])  # a replayed duplicate
    await consume(mon, label(1, "deny"))
    await consume(mon, shadow)  # the challenger's: never joined
    await consume(mon, label(3, "approve"))
    assert [c for _, c in monitor.performance.outcomes] == [True, False]


async def test_a_restart_resends_an_unpublished_report_and_restores_the_open_episode() -> None:
    mon, producer, store = await monitoring_of(model())
    await stream(mon, model(), *synthetic.generate(600, 71))
    await stream(mon, model(), *synthetic.generate(700, 72, salary_scale=1.6), start=600)
    (drift,) = producer.records(DriftDetected)
    store.reports[drift.episode_id]["published"] = False  # as if the process died before the ack
    restarted, producer2, _ = await monitoring_of(model(), store=store)
    (resent,) = producer2.records(DriftDetected)
    assert resent.event_id == drift.event_id  # same id: consumers see one event
    assert restarted.monitors[MODEL_NAME].episode is not None
    await stream(restarted, model(), *synthetic.generate(700, 73, salary_scale=1.6), start=1300)
    assert len(producer2.records(DriftDetected)) == 1  # the episode goes on: no new event


async def test_a_vector_reaches_only_its_projects_champion() -> None:
    from dataclasses import replace

    mon, _, _ = await monitoring_of(model())
    ((name, monitor),) = mon.monitors.items()
    mon.model_of = lambda v: {"loans": name, "machines": "machine-health"}.get(v.project or "")  # type: ignore[assignment]
    rows, _ = synthetic.generate(30, 7)
    for i, row in enumerate(rows):
        vec = FeatureVectorComputed.from_avro(synthetic.vector(row, i))
        await mon.on_vector(replace(vec, project="loans" if i % 3 == 0 else "machines"))
    assert len(monitor.vectors) == 10  # the machine project's vectors are not the loan model's inputs
