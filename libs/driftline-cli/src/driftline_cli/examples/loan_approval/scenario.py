"""The closed-loop scenario behind ``make demo`` and the end-to-end test.

Against running services, it streams the loan workload through the SDK (HTTP, via ingestion),
trains and deploys a first model, switches the labelling function (sudden concept drift), and
watches the topics until the loop closes: drift detected → retrained → promoted → the new version
serving. It reports accuracy before drift, after drift and with the new model; events between
onset and detection; seconds from ``drift.detected`` to the new version serving; and the episode's
correlation id.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer

from driftline.catalog import (
    DEPLOYMENTS_STATUS,
    DRIFT_DETECTED,
    MODELS_PROMOTED,
    MODELS_REJECTED,
    MODELS_TRAINED,
    PREDICTIONS,
    TRAINING_FAILED,
    TRAINING_REQUESTED,
)
from driftline.events import Event
from driftline.history import CHAIN_TOPICS, describe
from driftline.kafka import partitions_of
from driftline.serde import AvroSerde, DecodeError, SchemaRegistryClient
from driftline.settings import LOCAL_API_TOKEN, StackSettings
from driftline_cli.examples.loan_approval.generator import Item, LoanStream
from driftline_sdk import Publisher

WATCHED = (PREDICTIONS, *CHAIN_TOPICS)  # what is served, and every step of the loop


@dataclass
class ScenarioConfig:
    seed: int = 7
    warmup: int = 1200  # events (with labels) before the first model is trained
    before_drift: int = 1500  # events served by the first model before the concept switches
    after_drift_max: int = 6000  # events streamed after the switch while waiting for the loop
    after_new_model: int = 1000  # events scored by the new model
    from_function: int = 2
    to_function: int = 7
    drift_width: int = 0  # 0: a sudden switch; else the share of the new concept grows over this many events
    rate: float = 300.0  # events per second
    batch: int = 50
    label_delay: int = 40  # a label is published this many events after its event
    timeout_s: float = 900.0  # the whole scenario; past it the summary says the loop did not close
    ingestion_url: str = "http://127.0.0.1:38101"
    training_url: str = "http://127.0.0.1:38103"
    token: str = LOCAL_API_TOKEN
    model_name: str = "loan-approval"
    project: str = "loan-approval"  # the project on the projects topic whose examples are counted
    min_examples: int = 300


@dataclass
class Summary:
    closed: bool = False
    reason: str = ""
    first_version: int | None = None
    new_version: int | None = None
    correlation_id: str | None = None
    drift_kind: str | None = None
    drift_method: str | None = None
    onset_index: int | None = None
    detection_index: int | None = None
    events_to_detection: int | None = None
    drift_to_serving_s: float | None = None
    accuracy_before_drift: float | None = None
    accuracy_after_drift: float | None = None
    accuracy_new_model: float | None = None
    # The first model on as many events just before the new one took over: during a gradual
    # change, the fair "before" for the new model's accuracy.
    accuracy_just_before_new_model: float | None = None
    n_before: int = 0
    n_after: int = 0
    n_new: int = 0
    drift_events: int = 0  # drift.detected records after the onset: episodes opened and their further attempts
    episodes: int = 0  # distinct episodes among them
    attempts: list[dict[str, Any]] = field(default_factory=list)  # the first episode's: attempt, reason, run outcome
    runs_after_drift: int = 0
    runs_to_recover: int = 0  # runs of the first episode up to the one whose model serves
    timeline: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Watcher:
    """Follows the platform's topics from their current end while the scenario runs."""

    def __init__(self, stack: StackSettings, on_event: Callable[[Event, float], None]) -> None:
        self.stack = stack
        self.on_event = on_event
        self.registry = SchemaRegistryClient.from_settings(stack)
        self.serde = AvroSerde(self.registry, topic_prefix=stack.topic_prefix)
        self.consumer = AIOKafkaConsumer(**stack.kafka.client_kwargs(), group_id=None)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.consumer.start()
        tps = await partitions_of(self.stack.kafka, [self.stack.topic_prefix + t for t in WATCHED])
        self.consumer.assign(tps)
        await self.consumer.seek_to_end(*tps)
        for tp in tps:
            await self.consumer.position(tp)
        self._task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            batch = await self.consumer.getmany(timeout_ms=300, max_records=2000)
            now = time.monotonic()
            for records in batch.values():
                for rec in records:
                    topic = rec.topic[len(self.stack.topic_prefix) :]
                    try:
                        value, sid = await self.serde.decode(rec.value, topic)
                    except DecodeError:
                        continue
                    self.on_event(
                        Event(topic, rec.partition, rec.offset, rec.key, value, rec.value or b"", sid, rec.timestamp),
                        now,
                    )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.consumer.stop()
        await self.registry.close()


class Scenario:
    def __init__(
        self,
        stack: StackSettings,
        config: ScenarioConfig | None = None,
        *,
        say: Callable[[str], None] = print,
    ) -> None:
        self.stack = stack
        self.cfg = config or ScenarioConfig()
        self.say = say
        self.stream = LoanStream(seed=self.cfg.seed, function=self.cfg.from_function)
        self.items: dict[str, Item] = {}  # event id → item
        self.predictions: dict[str, tuple[int, str]] = {}  # event id → (version, predicted class)
        self.events: list[Event] = []
        self.published = 0
        self.t0 = time.monotonic()
        self.summary = Summary()
        self._pending_labels: list[Item] = []
        self._drift: Event | None = None
        self._serving_new: Event | None = None
        self._first_loaded: Event | None = None
        self._changed = asyncio.Event()

    # --- observing ---------------------------------------------------------------------------------

    def _on_event(self, event: Event, now: float) -> None:
        v = event.value
        if v.get("model_name", self.cfg.model_name) != self.cfg.model_name:
            return  # another project's model on the same install
        if event.topic == PREDICTIONS:
            if not v.get("shadow"):
                self.predictions[v["source_event_id"]] = (v["model_version"], v.get("predicted_class") or "")
            return
        self.events.append(event)
        line = {
            "t": round(now - self.t0, 1),
            "topic": event.topic,
            "what": describe(event),
            "published": self.published,
        }
        self.summary.timeline.append(line)
        self.say(f"[{line['t']:7.1f}s] {event.topic:<19} {line['what']}")
        if event.topic == DRIFT_DETECTED and self._drift is None and self.summary.onset_index is not None:
            self._drift = event
            self.summary.detection_index = self.published
        if event.topic == DEPLOYMENTS_STATUS and v["status"] == "loaded" and v["slot"] == "champion":
            if self._first_loaded is None:
                self._first_loaded = event
            elif (
                self._drift is not None
                and event.correlation_id == self._drift.correlation_id
                and self._serving_new is None
            ):
                self._serving_new = event
        self._changed.set()

    # --- publishing --------------------------------------------------------------------------------

    async def _stream(self, pub: Publisher, n: int, until: Callable[[], bool] = lambda: False) -> int:
        """Publish up to ``n`` events at the configured rate, labels ``label_delay`` behind."""
        sent = 0
        interval = self.cfg.batch / self.cfg.rate
        while sent < n and not until():
            started = time.monotonic()
            items = list(self.stream.take(min(self.cfg.batch, n - sent)))
            result = await pub.publish([it.event for it in items])
            if result.rejected:
                raise RuntimeError(f"the ingestion service refused generated events: {result.errors[:3]}")
            for it in items:
                self.items[it.event_id] = it
            self._pending_labels += items
            self.published += len(items)
            sent += len(items)
            due = self._pending_labels[: max(0, len(self._pending_labels) - self.cfg.label_delay)]
            if due:
                self._pending_labels = self._pending_labels[len(due) :]
                await pub.publish_labels([it.label_record() for it in due])
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))
        return sent

    async def _flush_labels(self, pub: Publisher) -> None:
        if self._pending_labels:
            await pub.publish_labels([it.label_record() for it in self._pending_labels])
            self._pending_labels = []

    async def _wait(self, predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 2.0))

    async def _labelled_examples(self, http: httpx.AsyncClient) -> int:
        try:
            r = await http.get(f"{self.cfg.training_url}/v1/examples", params={"project": self.cfg.project})
            return int(r.json().get("labelled", 0)) if r.status_code == 200 else 0
        except httpx.HTTPError:
            return 0

    # --- the scenario ------------------------------------------------------------------------------

    async def run(self) -> Summary:
        cfg = self.cfg
        watcher = Watcher(self.stack, self._on_event)
        await watcher.start()
        headers = {"Authorization": f"Bearer {cfg.token}"}
        try:
            async with (
                Publisher.http(cfg.ingestion_url, cfg.token, source="generator", batch_size=cfg.batch) as pub,
                httpx.AsyncClient(timeout=30, headers=headers) as http,
            ):
                try:
                    async with asyncio.timeout(cfg.timeout_s):
                        await self._run(pub, http)
                except TimeoutError as exc:
                    # asyncio.timeout raises a bare TimeoutError; the phases' own carry their reason.
                    raise TimeoutError(str(exc) or f"the scenario ran past its {cfg.timeout_s:.0f} s limit") from exc
        except TimeoutError as exc:
            self.summary.reason = str(exc)
        finally:
            await watcher.stop()
        self._measure()
        return self.summary

    async def _run(self, pub: Publisher, http: httpx.AsyncClient) -> None:
        cfg = self.cfg
        s = self.summary
        self.say(
            f"phase 1: {cfg.warmup} loan applications under concept f{cfg.from_function}, "
            f"labels {cfg.label_delay} events behind"
        )
        await self._stream(pub, cfg.warmup)
        await self._flush_labels(pub)
        deadline = time.monotonic() + 120
        while await self._labelled_examples(http) < cfg.min_examples:
            if time.monotonic() > deadline:
                raise TimeoutError("training never held enough labelled examples (is features running?)")
            await asyncio.sleep(1)

        self.say("phase 2: training the first model")
        r = await http.post(
            f"{cfg.training_url}/v1/training-requests", json={"model_name": cfg.model_name, "reason": "initial"}
        )
        r.raise_for_status()
        await self._wait(lambda: self._first_loaded is not None, 300, "the first model to be deployed")
        assert self._first_loaded is not None
        s.first_version = int(self._first_loaded.value["version"])

        self.say(f"phase 3: {cfg.before_drift} applications scored by v{s.first_version}")
        await self._stream(pub, cfg.before_drift)

        s.onset_index = self.published
        self.stream.schedule_concept_drift(at=self.stream.position, function=cfg.to_function, width=cfg.drift_width)
        how = f"over {cfg.drift_width} events" if cfg.drift_width else "at once"
        self.say(f"phase 4: concept drift — labels move to f{cfg.to_function} {how} (onset at event {s.onset_index})")
        await self._stream(pub, cfg.after_drift_max, until=lambda: self._serving_new is not None)
        await self._flush_labels(pub)
        await self._wait(lambda: self._serving_new is not None, 120, "the retrained model to be deployed")
        assert self._serving_new is not None and self._drift is not None
        s.new_version = int(self._serving_new.value["version"])
        s.correlation_id = self._drift.correlation_id

        self.say(f"phase 5: {cfg.after_new_model} applications scored by v{s.new_version}")
        new_from = self.published
        await self._stream(pub, cfg.after_new_model)
        await self._flush_labels(pub)
        self._new_from = new_from
        # Let the last predictions arrive.
        await self._wait(
            lambda: (
                sum(1 for it in list(self.items.values())[new_from:] if it.event_id in self.predictions)
                >= 0.95 * cfg.after_new_model
            ),
            60,
            "predictions of the last events",
        )
        s.closed = True

    def _measure(self) -> None:
        s = self.summary
        ordered = list(self.items.values())
        onset = s.onset_index if s.onset_index is not None else len(ordered)
        new_from = getattr(self, "_new_from", len(ordered))

        def accuracy(items: list[Item], version: int | None, *, or_later: bool = False) -> tuple[float | None, int]:
            def counts(v: int) -> bool:
                return v == version or (or_later and version is not None and v > version)

            pairs = [
                (self.predictions[it.event_id][1], it.label)
                for it in items
                if it.event_id in self.predictions and counts(self.predictions[it.event_id][0])
            ]
            return (sum(p == y for p, y in pairs) / len(pairs) if pairs else None), len(pairs)

        s.accuracy_before_drift, s.n_before = accuracy(ordered[:onset], s.first_version)
        s.accuracy_after_drift, s.n_after = accuracy(ordered[onset:new_from], s.first_version)
        # The retrained model, or a consolidation of it that replaced it meanwhile.
        s.accuracy_new_model, s.n_new = accuracy(ordered[new_from:], s.new_version, or_later=True)
        # The old model's last answers after the onset, as many as the new model's: counted by which
        # version scored them, since the new one may have taken over before phase 5 began.
        by_old = [
            it
            for it in ordered[onset:new_from]
            if it.event_id in self.predictions and self.predictions[it.event_id][0] == s.first_version
        ]
        s.accuracy_just_before_new_model, _ = accuracy(by_old[-max(s.n_new, 1) :], s.first_version)
        if s.detection_index is not None and s.onset_index is not None:
            s.events_to_detection = s.detection_index - s.onset_index
        if self._drift is not None:
            s.drift_kind = self._drift.value["kind"]
            s.drift_method = self._drift.value["method"]
            s.correlation_id = self._drift.correlation_id
        if self._drift is not None and self._serving_new is not None:
            s.drift_to_serving_s = (
                self._serving_new.value["produced_at"] - self._drift.value["produced_at"]
            ).total_seconds()
        drifts = [e for e in self.events if e.topic == DRIFT_DETECTED]
        s.drift_events = len(drifts)
        s.episodes = len({e.value["episode_id"] for e in drifts})
        if self._drift is not None:
            s.runs_after_drift, s.runs_to_recover, s.attempts = self._episode_runs(self._drift)
        if not s.closed and not s.reason:
            s.reason = "the loop did not close"

    def _episode_runs(self, drift: Event) -> tuple[int, int, list[dict[str, Any]]]:
        """The first episode's chain: its runs, those up to the one whose model serves, and each
        attempt with what became of its run (promoted / rejected / failed / pending)."""
        chain = [e for e in self.events if e.correlation_id == drift.correlation_id]
        runs = {e.event_id: e for e in chain if e.topic == MODELS_TRAINED}
        outcome: dict[str, str] = {}
        for e in chain:
            if e.topic in (MODELS_PROMOTED, MODELS_REJECTED) and e.causation_id in runs:
                cause = runs[e.causation_id].causation_id
                outcome[cause or ""] = "promoted" if e.topic == MODELS_PROMOTED else "rejected"
            if e.topic == TRAINING_FAILED:
                outcome[e.causation_id or ""] = "failed"
        attempts = []
        request_events = {e.event_id: e for e in chain if e.topic == TRAINING_REQUESTED}
        for e in chain:
            if e.topic != DRIFT_DETECTED:
                continue
            asked = [r for r in request_events.values() if r.causation_id == e.event_id]
            attempts.append(
                {
                    "attempt": int(e.value.get("attempt") or 1),
                    "reason": e.value.get("reason") or "detected",
                    "outcome": next((outcome[r.event_id] for r in asked if r.event_id in outcome), "pending"),
                }
            )
        serving = self._serving_new
        recovered = [
            e for e in runs.values() if serving is None or e.value["produced_at"] <= serving.value["produced_at"]
        ]
        return len(runs), len(recovered), attempts
