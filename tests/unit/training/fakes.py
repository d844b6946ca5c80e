"""In-memory stand-ins for the training service's store, outbox and object store."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from driftline.artifacts import ArtifactIntegrityError, ArtifactRef, sha256_hex
from driftline.events import Event, envelope
from driftline.project import Project, load_project
from driftline.records import (
    DriftDetected,
    DriftEvidence,
    FeatureVectorComputed,
    LabelRecorded,
    ModelPromoted,
    ModelTrained,
    Record,
    TrainingFailed,
    TrainingRequested,
)
from driftline_training.champion import Champion
from driftline_training.config import TrainingSettings
from driftline_training.handlers import TrainingHandlers
from driftline_training.pipeline import Example
from driftline_training.requests import request_record
from driftline_training.service import assemble
from driftline_training.store import CountedGap
from driftline_training.trigger_policy import Trigger

PROJECT = load_project()


@dataclass
class FakeStore:
    examples: list[Example] = field(default_factory=list)
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    champion: Champion | None = None
    champions: list[tuple[Champion, str]] = field(default_factory=list)
    select_error: Exception | None = None
    selected: int = 0
    triggers: dict[str, Trigger] = field(default_factory=dict)
    staged: list[tuple[str, Record]] = field(default_factory=list)
    labelled: int | None = None  # what counting labelled examples answers (None: the examples)
    counted_since: list[datetime | None] = field(default_factory=list)
    # (event time, labelled) of each stored feature vector: what a count cooldown counts.
    vectors: list[tuple[datetime, bool]] = field(default_factory=list)
    _finished: list[tuple[str, str, Record]] = field(default_factory=list)

    @property
    def finished(self) -> list[tuple[str, str, str, Record]]:
        """(run_id, status, topic, record) of each finished run, with the topic its event was staged on."""
        topics = {record.event_id: topic for topic, record in self.staged}
        return [(run_id, status, topics[r.event_id], r) for run_id, status, r in self._finished]

    def staged_on(self, topic: str) -> list[Any]:
        return [record for t, record in self.staged if t == topic]

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[FakeTransaction]:
        yield FakeTransaction(self)

    async def save_examples(self, vectors: Sequence[FeatureVectorComputed], labels: Sequence[LabelRecorded]) -> None:
        pass

    async def example_counts(self, *_: Any) -> dict[str, int]:
        n = len(self.examples) if self.labelled is None else self.labelled
        return {"vectors": n, "labels": n, "label_records": n, "labelled": n}

    async def count_labelled(self, _fsv: str, _classes: Any, since: datetime | None, project: Any = None) -> int:
        self.counted_since.append(since)
        if self.labelled is not None:
            return self.labelled
        return sum(1 for e in self.examples if since is None or e.event_time >= since)

    async def clock(self) -> datetime:
        return datetime.now(UTC)

    async def select_examples(
        self, *_: Any, since: datetime | None, limit: int, project: Any = None, labels_as_of: Any = None
    ) -> list[Example]:
        self.selected += 1
        if self.select_error is not None:
            raise self.select_error
        chosen = [e for e in self.examples if since is None or e.event_time >= since]
        return sorted(chosen, key=lambda e: e.event_time, reverse=True)[:limit]

    async def waiting_triggers(self) -> list[Trigger]:
        return [t for t in self.triggers.values() if t.waiting]

    async def trigger_exists(self, trigger_id: str) -> bool:
        return trigger_id in self.triggers

    async def get_run(self, run_id: str) -> dict[str, Any] | None:
        return self.runs.get(run_id)

    async def start_run(self, run_id: str, request: TrainingRequested) -> int:
        attempts = int(self.runs.get(run_id, {}).get("attempts", 0)) + 1
        self.runs[run_id] = {"request_id": request.request_id, "status": "running", "attempts": attempts}
        return attempts

    async def get_champion(self, model_name: str) -> Champion | None:
        return self.champion

    async def set_champion(self, champion: Champion, *, promoted_event_id: str, action: str) -> None:
        self.champions.append((champion, action))


@dataclass
class FakeTransaction:
    store: FakeStore

    async def stage(self, topic: str, record: Record) -> None:
        self.store.staged.append((topic, record))

    async def lock_model_triggers(self, model_name: str) -> None:
        pass

    async def trigger(self, trigger_id: str) -> Trigger | None:
        return self.store.triggers.get(trigger_id)

    def _live(self, model_name: str, kind: str) -> list[datetime]:
        failed = {r["request_id"] for r in self.store.runs.values() if r["status"] == "failed"}
        return [
            t.event_time
            for t in self.store.triggers.values()
            if (t.model_name, t.kind, t.decision) == (model_name, kind, "requested")
            and (t.waiting or t.request_id not in failed)
        ]

    def _gap(self, a: datetime, b: datetime, counted: CountedGap) -> int:
        lo, hi = min(a, b), max(a, b)
        n = sum(1 for t, labelled in self.store.vectors if lo < t <= hi and (counted.unit == "events" or labelled))
        return min(n, counted.up_to)

    async def nearest_live_request(self, model_name: str, kind: str, event_time: datetime) -> datetime | None:
        live = self._live(model_name, kind)
        return min(live, key=lambda t: abs((t - event_time).total_seconds()), default=None)

    async def nearest_live_request_counted(
        self, model_name: str, kind: str, event_time: datetime, counted: CountedGap
    ) -> tuple[datetime, int] | None:
        gaps = [(t, self._gap(t, event_time, counted)) for t in self._live(model_name, kind)]
        return min(gaps, key=lambda g: (g[1], abs((g[0] - event_time).total_seconds())), default=None)

    async def latest_suppressed(self, near: Trigger, within_s: float) -> Trigger | None:
        suppressed = [
            t
            for t in self.store.triggers.values()
            if (t.model_name, t.kind, t.decision) == (near.model_name, near.kind, "cooldown")
            and abs((t.event_time - near.event_time).total_seconds()) < within_s
        ]
        return max(suppressed, key=lambda t: t.event_time, default=None)

    async def latest_suppressed_counted(self, near: Trigger, counted: CountedGap) -> Trigger | None:
        suppressed = [
            t
            for t in self.store.triggers.values()
            if (t.model_name, t.kind, t.decision) == (near.model_name, near.kind, "cooldown")
            and self._gap(t.event_time, near.event_time, counted) < counted.up_to
        ]
        return max(suppressed, key=lambda t: t.event_time, default=None)

    async def insert_trigger(self, t: Trigger) -> None:
        assert t.trigger_id not in self.store.triggers
        self.store.triggers[t.trigger_id] = t

    async def mark_requested(self, trigger_id: str, reason: str, request_id: str) -> bool:
        t = self.store.triggers[trigger_id]
        if t.decision != "cooldown":
            return False
        self.store.triggers[trigger_id] = replace(t, decision="requested", reason=reason, request_id=request_id)
        return True

    async def take_waiting(self, trigger_id: str, request_id: str) -> bool:
        t = self.store.triggers[trigger_id]
        if not t.waiting:
            return False
        self.store.triggers[trigger_id] = replace(t, waiting=False, attempts=t.attempts + 1, request_id=request_id)
        return True

    async def set_waiting(self, trigger_id: str) -> None:
        self.store.triggers[trigger_id] = replace(self.store.triggers[trigger_id], waiting=True)

    async def finish_run(self, run_id: str, outcome: ModelTrained | TrainingFailed, *, duration_s: float) -> bool:
        run = self.store.runs[run_id]
        if run["status"] != "running":
            return False
        status = "succeeded" if isinstance(outcome, ModelTrained) else "failed"
        run.update(status=status, result_event_id=outcome.event_id, duration_s=duration_s)
        self.store._finished.append((run_id, status, outcome))
        return True


@dataclass
class FakeOutbox:
    published: list[list[str]] = field(default_factory=list)

    async def publish(self, event_ids: Sequence[str]) -> int:
        self.published.append(list(event_ids))
        return len(event_ids)


class RecordingArtifacts:
    """An in-memory object store with the real store's digest check."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    async def put(self, key: str, data: bytes, content_type: str = "") -> ArtifactRef:
        self.objects[key] = data
        return ArtifactRef("bucket", key, sha256_hex(data), len(data))

    async def put_json(self, key: str, doc: Any) -> ArtifactRef:
        return await self.put(key, json.dumps(doc, sort_keys=True, default=str).encode())

    async def get(self, key: str, sha256: str) -> bytes:
        data = self.objects[key]
        if sha256_hex(data) != sha256:
            raise ArtifactIntegrityError(f"{key}: SHA-256 mismatch")
        return data

    async def get_json(self, key: str, sha256: str) -> Any:
        return json.loads(await self.get(key, sha256))


class FlakyArtifacts(RecordingArtifacts):
    """The object store is down for the first ``failures`` uploads."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def put(self, key: str, data: bytes, content_type: str = "") -> ArtifactRef:
        if self.failures > 0:
            self.failures -= 1
            raise TimeoutError("object store down")
        return await super().put(key, data, content_type)


@dataclass
class SlowStore(FakeStore):
    async def select_examples(
        self, *args: Any, since: datetime | None, limit: int, project: Any = None, labels_as_of: Any = None
    ) -> list[Example]:
        await asyncio.sleep(5)
        return await super().select_examples(*args, since=since, limit=limit, project=project)


def handlers(
    store: FakeStore,
    artifacts: Any = None,
    timeout_s: float = 60,
    project: Project = PROJECT,
    **options: Any,
) -> TrainingHandlers:
    """The service's handlers, wired as ``wire`` does, over the fakes."""
    settings = TrainingSettings(object_store_timeout_s=timeout_s, **{"retry_backoff_s": 0.01, **options})
    return assemble(project, store, FakeOutbox(), artifacts, "training", settings)  # type: ignore[arg-type]


def published(h: TrainingHandlers) -> list[list[str]]:
    return h.triggers.outbox.published  # type: ignore[attr-defined, no-any-return]


def event(topic: str, record: Record) -> Event[Any]:
    """A consumed event carrying ``record``."""
    return Event(topic, 0, 0, None, record.to_avro(), b"", 1, 0, record)


def request(request_id: str = "req-1", reason: str = "manual", **parameters: str) -> TrainingRequested:
    return request_record(
        request_id=request_id,
        model_name=PROJECT.model.name,
        reason=reason,
        requested_by="me",
        parameters=parameters,
        producer="test",
    )


def drift_record(
    onset: datetime | None,
    *,
    episode_id: str = "episode-1",
    model_name: str = PROJECT.model.name,
    at: datetime | None = None,
) -> DriftDetected:
    window_start = (onset or datetime(2026, 11, 30, 12, 0, tzinfo=UTC)) - timedelta(minutes=5)
    return DriftDetected(
        **envelope("monitoring", event_time=at),
        episode_id=episode_id,
        kind="performance",
        method="accuracy_drop",
        statistic=0.4,
        threshold=0.12,
        window_start=window_start,
        window_end=window_start + timedelta(minutes=10),
        window_size=600,
        features=(),
        model_name=model_name,
        model_version=1,
        evidence=(DriftEvidence(method="accuracy_drop", statistic=0.4, threshold=0.12, drifted=True),),
        onset=onset,
    )


def promoted(**fields: object) -> ModelPromoted:
    values: dict[str, object] = {
        "model_name": PROJECT.model.name,
        "version": 2,
        "run_id": "run-2",
        "artifact_bucket": "b",
        "artifact_key": "k",
        "artifact_sha256": "s",
        "metadata_key": "mk",
        "metadata_sha256": "ms",
        "feature_names": ("salary",),
        "previous_version": 1,
        "action": "promote",
        "reason": "r",
        "actor": "policy",
        "metrics": {},
        **fields,
    }
    return ModelPromoted(**envelope("registry"), **values)
