"""The training handlers with fakes for their stores: failures become events, never a stuck consumer."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from driftline.artifacts import ArtifactStore
from driftline.catalog import LABELS, MODELS_PROMOTED, TRAINING_FAILED, TRAINING_REQUESTED
from driftline.events import Event, derived_event_id, envelope
from driftline.kafka import PoisonRecord
from driftline.project import load_project
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

    async def start_run(self, **fields: Any) -> None:
        self.runs[fields["run_id"]] = {**fields, "status": "running"}

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


def handlers(store: FakeStore, artifacts: Any = None, timeout_s: float = 60) -> TrainingHandlers:
    return TrainingHandlers(
        project=PROJECT,
        store=store,  # type: ignore[arg-type]
        artifacts=artifacts,
        outbox=FakeOutbox(),  # type: ignore[arg-type]
        object_store_timeout_s=timeout_s,
    )


async def test_an_unreachable_object_store_fails_the_run_after_its_retries() -> None:
    store = FakeStore(examples=examples(400))
    unreachable = ArtifactStore("127.0.0.1:9", "user", "password", "bucket")
    h = handlers(store, unreachable, timeout_s=1.0)
    req = request_event()
    await h.on_request(req)
    ((run_id, status, topic, record, _),) = store.finished
    assert (status, topic) == ("failed", TRAINING_FAILED)
    assert record["error_type"] == "object_store_unavailable" and record["retryable"] is True
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
