"""The training handlers with fakes for their stores: failures become events, never a stuck consumer."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from driftline.artifacts import ArtifactStore, sha256_hex
from driftline.catalog import LABELS, MODELS_PROMOTED, TRAINING_FAILED, TRAINING_REQUESTED
from driftline.events import Event, derived_event_id, envelope
from driftline.kafka import PoisonRecord
from driftline.project import load_project
from driftline_ml.models import build_estimator, dump_model, load_model
from driftline_training import pipeline
from driftline_training.handlers import TrainingHandlers, request_record
from driftline_training.pipeline import Example
from driftline_training.store import Champion, cooldown_decision
from tests.unit.training.test_pipeline import examples

PROJECT = load_project()


@dataclass
class FakeStore:
    examples: list[Example] = field(default_factory=list)
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    finished: list[tuple[str, str, str, dict[str, Any], dict[str, Any]]] = field(default_factory=list)
    champion: Champion | None = None
    champions: list[tuple[Champion, str]] = field(default_factory=list)
    select_error: Exception | None = None
    selected: int = 0

    async def get_run(self, run_id: str) -> dict[str, Any] | None:
        return self.runs.get(run_id)

    async def start_run(self, **fields: Any) -> int:
        attempts = self.runs.get(fields["run_id"], {}).get("attempts", 0) + 1
        self.runs[fields["run_id"]] = {**fields, "status": "running", "attempts": attempts}
        return int(attempts)

    async def finish_run(self, run_id: str, *, status: str, topic: str, record: dict[str, Any], **fields: Any) -> None:
        self.runs[run_id].update(status=status, result_event_id=record["event_id"], **fields)
        self.finished.append((run_id, status, topic, record, fields))

    async def select_examples(self, *_: Any, since: datetime | None, limit: int) -> list[Example]:
        self.selected += 1
        if self.select_error is not None:
            raise self.select_error
        chosen = [e for e in self.examples if since is None or e.event_time >= since]
        return sorted(chosen, key=lambda e: e.event_time, reverse=True)[:limit]

    async def get_champion(self, model_name: str) -> Champion | None:
        return self.champion

    async def set_champion(self, champion: Champion, *, promoted_event_id: str, action: str) -> None:
        self.champions.append((champion, action))

    async def save_examples(self, vectors: list[Any], labels: list[Any]) -> None:
        pass

    revived: list[str] = field(default_factory=list)

    async def revive_suppressed(self, failed_trigger_id: str, cooldown_s: float, make_request: Any) -> None:
        self.revived.append(failed_trigger_id)


@dataclass
class FakeOutbox:
    published: list[list[str]] = field(default_factory=list)

    async def publish(self, event_ids: list[str]) -> int:
        self.published.append(list(event_ids))
        return len(event_ids)


def event(topic: str, value: dict[str, Any]) -> Event:
    return Event(topic, 0, 0, None, value, b"", 1, 0)


def request_event(**parameters: str) -> Event:
    record = request_record(
        request_id="req-1", model_name=PROJECT.model.name, reason="manual", requested_by="me", parameters=parameters
    )
    return event(TRAINING_REQUESTED, record)


def handlers(store: FakeStore, artifacts: Any = None, timeout_s: float = 60, **options: Any) -> TrainingHandlers:
    return TrainingHandlers(
        project=PROJECT,
        store=store,  # type: ignore[arg-type]
        artifacts=artifacts,
        outbox=FakeOutbox(),  # type: ignore[arg-type]
        object_store_timeout_s=timeout_s,
        **{"retry_backoff_s": 0.01, **options},
    )


async def test_an_unreachable_object_store_fails_the_run_after_its_retries() -> None:
    store = FakeStore(examples=examples(400))
    unreachable = ArtifactStore("127.0.0.1:9", "user", "password", "bucket")
    h = handlers(store, unreachable, timeout_s=0.5, run_attempts=2)
    req = request_event()
    await h.on_request(req)
    ((run_id, status, topic, record, _),) = store.finished
    assert (status, topic) == ("failed", TRAINING_FAILED)
    assert record["error_type"] == "object_store_unavailable" and record["retryable"] is True
    assert "after 2 attempts" in record["reason"] and store.runs[run_id]["attempts"] == 2
    assert record["run_id"] == run_id == derived_event_id("run", "req-1")
    assert record["correlation_id"] == req.correlation_id and record["causation_id"] == req.event_id
    assert h.outbox.published == [[record["event_id"]]]  # type: ignore[attr-defined]


async def test_a_redelivered_request_of_a_finished_run_only_republishes_its_result() -> None:
    run_id = derived_event_id("run", "req-1")
    store = FakeStore(runs={run_id: {"status": "succeeded", "result_event_id": "ev-result"}})
    h = handlers(store)
    await h.on_request(request_event())
    assert store.selected == 0 and store.finished == []
    assert h.outbox.published == [["ev-result"]]  # type: ignore[attr-defined]


async def test_an_unexpected_error_in_a_run_becomes_training_failed() -> None:
    store = FakeStore(select_error=RuntimeError("boom"))
    await handlers(store).on_request(request_event())
    ((_, status, _, record, _),) = store.finished
    assert status == "failed" and record["error_type"] == "internal_error" and "boom" in record["reason"]


async def test_an_outage_during_a_run_is_left_to_the_consumer_to_retry() -> None:
    store = FakeStore(select_error=ConnectionError("database down"))
    with pytest.raises(ConnectionError):
        await handlers(store).on_request(request_event())
    assert store.finished == []
    assert store.runs[derived_event_id("run", "req-1")]["status"] == "running"


async def test_invalid_parameters_in_a_request_fail_the_run() -> None:
    store = FakeStore(examples=examples(400))
    await handlers(store).on_request(request_event(holdout_fraction="2"))
    ((_, status, _, record, _),) = store.finished
    assert status == "failed" and record["error_type"] == "invalid_parameters"


async def test_a_label_outside_the_project_classes_is_a_poison_record() -> None:
    label = {
        **envelope("test"),
        "labelled_event_id": "raw-1",
        "entity_id": "c1",
        "label": "maybe",
        "source": "test",
    }
    with pytest.raises(PoisonRecord, match="maybe"):
        await handlers(FakeStore()).on_examples([event(LABELS, label)])


async def test_only_promotions_and_rollbacks_change_the_champion() -> None:
    store = FakeStore()
    h = handlers(store)
    base = {
        **envelope("registry"),
        "model_name": PROJECT.model.name,
        "version": 2,
        "run_id": "run-2",
        "artifact_bucket": "b",
        "artifact_key": "k",
        "artifact_sha256": "s",
        "metadata_key": "mk",
        "metadata_sha256": "ms",
        "feature_names": ["salary"],
        "previous_version": 1,
        "reason": "r",
        "actor": "policy",
        "metrics": {},
        "drift_episode_id": None,
    }
    for action in ("shadow", "promote", "rollback"):
        await h.on_promoted(event(MODELS_PROMOTED, {**base, "action": action}))
    assert [a for _, a in store.champions] == ["promote", "rollback"]
    assert store.champions[0][0].version == 2 and store.champions[0][0].feature_names == ["salary"]


def test_cooldown_requests_once_within_the_window() -> None:
    t = datetime(2025, 1, 1, tzinfo=UTC)
    assert cooldown_decision(None, t, 60)[0] == "requested"
    assert cooldown_decision(t, t + timedelta(seconds=30), 60)[0] == "cooldown"
    assert cooldown_decision(t + timedelta(seconds=30), t, 60)[0] == "cooldown"  # out of order, same window
    assert cooldown_decision(t, t + timedelta(seconds=61), 60)[0] == "requested"


class RecordingArtifacts:
    """An in-memory object store with the real store's digest check."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    async def put(self, key: str, data: bytes, content_type: str = "") -> Any:
        from driftline.artifacts import ArtifactRef, sha256_hex

        self.objects[key] = data
        return ArtifactRef("bucket", key, sha256_hex(data), len(data))

    async def put_json(self, key: str, doc: Any) -> Any:
        import json

        return await self.put(key, json.dumps(doc, sort_keys=True, default=str).encode())


async def test_a_run_left_running_by_a_crash_is_run_again() -> None:
    run_id = derived_event_id("run", "req-1")
    store = FakeStore(examples=examples(400), runs={run_id: {"status": "running"}})
    artifacts = RecordingArtifacts()
    await handlers(store, artifacts).on_request(request_event(selection="recent"))
    ((_, status, topic, record, _),) = store.finished
    assert (status, topic) == ("succeeded", "models.trained")
    assert record["event_id"] == derived_event_id("model-trained", run_id)
    assert set(artifacts.objects) == {record["artifact_key"], record["metadata_key"]}


@dataclass
class InitialStore(FakeStore):
    labelled: int = 0
    decided: list[dict[str, Any]] = field(default_factory=list)

    async def trigger_exists(self, trigger_id: str) -> bool:
        return any(d["trigger_id"] == trigger_id for d in self.decided)

    async def example_counts(self, *_: Any) -> dict[str, int]:
        return {"vectors": self.labelled, "labels": self.labelled, "labelled": self.labelled}

    async def decide_trigger(self, **kwargs: Any) -> Any:
        from driftline_training.store import TriggerDecision

        self.decided.append(kwargs)
        _, record = kwargs["request"]
        return TriggerDecision(kwargs["trigger_id"], "requested", "", record["request_id"], record["event_id"], True)


async def test_the_first_model_is_requested_once_enough_labelled_examples_exist() -> None:
    project = PROJECT.model_copy(
        update={"training": PROJECT.training.model_copy(update={"initial_training_after": 100})}
    )
    store = InitialStore(labelled=99)
    h = TrainingHandlers(project=project, store=store, artifacts=None, outbox=FakeOutbox())  # type: ignore[arg-type]
    await h.maybe_request_initial()
    assert store.decided == []
    store.labelled = 100
    await h.maybe_request_initial()
    await h.maybe_request_initial()
    ((decision),) = store.decided
    _, record = decision["request"]
    assert (record["reason"], record["since"], record["drift_episode_id"]) == ("initial", None, None)
    assert record["correlation_id"] == record["event_id"]  # a new chain
    assert h.outbox.published == [[record["event_id"]]]  # type: ignore[attr-defined]


# -- attempts, retries and the run's time limit ------------------------------------------------


class FlakyArtifacts(RecordingArtifacts):
    """The object store is down for the first ``failures`` uploads."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def put(self, key: str, data: bytes, content_type: str = "") -> Any:
        if self.failures > 0:
            self.failures -= 1
            raise TimeoutError("object store down")
        return await super().put(key, data, content_type)


async def test_an_object_store_outage_is_retried_with_a_new_attempt_and_the_run_succeeds() -> None:
    store = FakeStore(examples=examples(400))
    artifacts = FlakyArtifacts(failures=1)
    await handlers(store, artifacts, run_attempts=3).on_request(request_event(selection="recent"))
    ((run_id, status, topic, record, _),) = store.finished
    assert (status, topic) == ("succeeded", "models.trained")
    assert store.runs[run_id]["attempts"] == 2
    assert set(artifacts.objects) == {record["artifact_key"], record["metadata_key"]}


async def test_a_failure_that_needs_new_data_is_not_retried_in_place() -> None:
    store = FakeStore(examples=examples(100))
    await handlers(store, run_attempts=3).on_request(request_event(selection="recent"))
    ((run_id, status, _, record, _),) = store.finished
    assert status == "failed" and record["error_type"] == "too_few_examples"
    assert store.runs[run_id]["attempts"] == 1


@dataclass
class SlowStore(FakeStore):
    async def select_examples(self, *args: Any, since: datetime | None, limit: int) -> list[Example]:
        await asyncio.sleep(5)
        return await super().select_examples(*args, since=since, limit=limit)


async def test_a_run_longer_than_max_run_seconds_fails_with_run_timeout() -> None:
    store = SlowStore(examples=examples(400))
    started = time.perf_counter()
    await handlers(store, RecordingArtifacts(), max_run_seconds=0.3).on_request(request_event())
    assert time.perf_counter() - started < 3
    ((_, status, topic, record, _),) = store.finished
    assert (status, topic, record["error_type"]) == ("failed", TRAINING_FAILED, "run_timeout")
    assert "max_run_seconds" in record["reason"]


async def test_two_attempts_of_one_run_never_overwrite_each_others_artifact() -> None:
    # Attempt 1 is still running when a redelivery starts attempt 2 on more examples; both
    # upload. Each announced digest must still match the object under its key.
    store = FakeStore(examples=examples(400))
    artifacts = RecordingArtifacts()
    h = handlers(store, artifacts)
    req = request_event(selection="recent")
    run_id = derived_event_id("run", "req-1")
    first = await h.run(req, run_id, attempt=1)
    store.examples = examples(500)
    second = await h.run(req, run_id, attempt=2)
    assert first.record["artifact_sha256"] != second.record["artifact_sha256"]
    for outcome in (first, second):
        r = outcome.record
        assert sha256_hex(artifacts.objects[r["artifact_key"]]) == r["artifact_sha256"]
        assert sha256_hex(artifacts.objects[r["metadata_key"]]) == r["metadata_sha256"]
        assert r["artifact_sha256"] in r["artifact_key"]
    assert len(artifacts.objects) == 4


async def test_a_drift_run_that_failed_for_good_lets_a_suppressed_drift_be_requested() -> None:
    store = FakeStore(examples=examples(400, label="deny"))
    record = request_record(
        request_id="drift-req",
        model_name=PROJECT.model.name,
        reason="drift",
        requested_by="training:drift-policy",
        drift_episode_id="episode-1",
    )
    await handlers(store).on_request(event(TRAINING_REQUESTED, record))
    ((_, status, _, failed, _),) = store.finished
    assert status == "failed" and failed["error_type"] == "single_class"
    assert store.revived == [f"drift:{PROJECT.model.name}:episode-1"]


# -- a drift that comes before its labels waits for them ----------------------------------------


@dataclass
class DriftStore(FakeStore):
    labelled_since: int = 0
    decided: list[dict[str, Any]] = field(default_factory=list)
    counted_since: list[datetime | None] = field(default_factory=list)

    async def count_labelled(self, _fsv: str, _classes: Any, since: datetime | None) -> int:
        self.counted_since.append(since)
        return self.labelled_since

    async def decide_trigger(self, **kwargs: Any) -> Any:
        from driftline_training.store import TriggerDecision

        self.decided.append(kwargs)
        if kwargs["defer"]:
            return TriggerDecision(kwargs["trigger_id"], "requested", "waiting", None, None, True)
        _, record = kwargs["request"]
        return TriggerDecision(kwargs["trigger_id"], "requested", "", record["request_id"], record["event_id"], True)


def drift_event(onset: datetime) -> Event:
    value = {
        **envelope("monitoring"),
        "model_name": PROJECT.model.name,
        "episode_id": "episode-1",
        "onset": onset,
        "window_start": onset - timedelta(minutes=5),
    }
    return event("drift.detected", value)


@pytest.mark.parametrize(
    ("labelled", "waits"), [(PROJECT.training.min_examples - 1, True), (PROJECT.training.min_examples, False)]
)
async def test_a_drift_requests_a_run_only_once_enough_examples_since_its_onset_are_labelled(
    labelled: int, waits: bool
) -> None:
    onset = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    store = DriftStore(labelled_since=labelled)
    h = handlers(store)
    await h.on_drift(drift_event(onset))
    assert store.counted_since == [onset]  # since_drift: the examples after the onset
    ((decision,),) = [store.decided]
    assert decision["defer"] is waits and decision["since"] == onset
    published = h.outbox.published  # type: ignore[attr-defined]
    assert published == ([] if waits else [[decision["request"][1]["event_id"]]])


# -- the champion is compared on examples it did not train on ----------------------------------


class ChampionArtifacts(RecordingArtifacts):
    async def get(self, key: str, sha256: str) -> bytes:
        from driftline.artifacts import ArtifactIntegrityError

        data = self.objects[key]
        if sha256_hex(data) != sha256:
            raise ArtifactIntegrityError(f"{key}: SHA-256 mismatch")
        return data

    async def get_json(self, key: str, sha256: str) -> Any:
        return json.loads(await self.get(key, sha256))


async def _champion(artifacts: ChampionArtifacts, trained_on: list[Example], *, metadata: bool = True) -> Champion:
    model = build_estimator(PROJECT.model, seed=1)
    model.fit(pipeline.feature_matrix(trained_on, PROJECT.model_features), [e.label for e in trained_on])
    art = await artifacts.put("champion/model.skops", dump_model(model))
    if not metadata:
        return Champion(PROJECT.model.name, 1, "run-1", "bucket", art.key, art.sha256, PROJECT.model_features)
    doc = {"selection": {"train_end": trained_on[-1].event_time.isoformat()}}
    meta = await artifacts.put_json("champion/metadata.json", doc)
    return Champion(
        PROJECT.model.name, 1, "run-1", "bucket", art.key, art.sha256, PROJECT.model_features, meta.key, meta.sha256
    )


async def test_the_champion_is_scored_only_on_holdout_examples_after_its_training_data() -> None:
    data = examples(400)  # the candidate trains on the oldest 300, holds out the newest 100
    artifacts = ChampionArtifacts()
    champion = await _champion(artifacts, data[:350])  # it trained on half of that holdout
    store = FakeStore(examples=data, champion=champion)
    outcome = await handlers(store, artifacts, min_comparison_examples=20).run(
        request_event(selection="recent"), "run-2"
    )
    r = outcome.record
    unseen = data[350:]
    assert r["n_holdout"] == 100 and r["n_comparison"] == 50 and r["champion_version"] == 1
    champion_model = load_model(artifacts.objects[champion.artifact_key])
    positive = PROJECT.label.positive_class
    expected = pipeline.evaluate_on_holdout(champion_model, unseen, champion.feature_names, positive)
    assert r["champion_metrics"] == expected
    assert r["comparison_metrics"] == pipeline.evaluate_on_holdout(
        outcome.result.model, unseen, outcome.result.feature_names, positive
    )
    metadata = json.loads(artifacts.objects[r["metadata_key"]])
    assert metadata["comparison"]["n_holdout_excluded"] == 50
    assert metadata["comparison"]["champion_train_end"] == data[349].event_time.isoformat()


async def test_too_few_unseen_holdout_examples_means_no_comparison_with_the_reason() -> None:
    data = examples(400)
    artifacts = ChampionArtifacts()
    champion = await _champion(artifacts, data[:390])
    store = FakeStore(examples=data, champion=champion)
    outcome = await handlers(store, artifacts, min_comparison_examples=20).run(
        request_event(selection="recent"), "run-2"
    )
    r = outcome.record
    assert r["champion_metrics"] is None and r["champion_version"] is None and r["comparison_metrics"] is None
    metadata = json.loads(artifacts.objects[r["metadata_key"]])
    assert "only 10 of the 100 holdout examples" in metadata["champion_evaluation_error"]


async def test_a_champion_without_recorded_training_data_is_scored_on_the_whole_holdout() -> None:
    data = examples(400)
    artifacts = ChampionArtifacts()
    champion = await _champion(artifacts, data[:300], metadata=False)
    store = FakeStore(examples=data, champion=champion)
    r = (await handlers(store, artifacts).run(request_event(selection="recent"), "run-2")).record
    assert r["n_comparison"] == 100 and r["comparison_metrics"] == r["metrics"]
    assert r["champion_metrics"] is not None
