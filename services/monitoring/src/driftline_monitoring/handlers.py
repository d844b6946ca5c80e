"""What monitoring does with each record: feed the windows of the champion's monitor, run the
checks, persist what they found, and publish one ``drift.detected`` per drift episode.

Inputs: ``models.promoted`` (followed in full by every instance: the champion and its reference
profile), and, in the consumer group, ``features.vectors``, ``predictions`` and ``labels``.
Predictions of the champion (never the shadow's) are joined with labels by the raw event id
(``source_event_id`` = ``labelled_event_id``), whichever arrives first; both sides wait in
bounded maps. The three topics are keyed by entity, so with the range assignor a record and its
label land on the same instance.

Side effects (PostgreSQL, Kafka) are retried here until they succeed, so the consumer never
replays a batch into windows that already hold it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from prometheus_client import Counter, Gauge

from driftline.artifacts import ArtifactStore
from driftline.catalog import DRIFT_DETECTED, FEATURES_VECTORS, LABELS, PREDICTIONS
from driftline.events import Event, as_utc, derived_event_id, epoch_ms
from driftline.kafka import EventProducer, is_transient, retry_transient
from driftline.logging import get_logger
from driftline.project import DriftPolicy
from driftline_monitoring.drift import BoundedMap, CheckResult, Detection, Episode, Evidence, ModelMonitor, Reference
from driftline_monitoring.store import MonitoringStore

log = get_logger(__name__)

T = TypeVar("T")

CHECKS = Counter("driftline_monitoring_checks_total", "Window checks run", ["model"])
DRIFTS = Counter("driftline_monitoring_drift_events_total", "drift.detected events published", ["model", "kind"])
IGNORED = Counter("driftline_monitoring_ignored_total", "Records not monitored", ["topic", "reason"])
FEATURE_PSI = Gauge("driftline_monitoring_psi", "PSI of the last check", ["model", "feature"])
ROLLING_ACCURACY = Gauge("driftline_monitoring_rolling_accuracy", "Rolling accuracy of the champion", ["model"])


def evidence_by_feature(evidence: Sequence[Evidence]) -> dict[str, dict[str, Any]]:
    """Window-summary form of the input tests: feature → {psi, ks, p_value, ks_threshold, drifted}."""
    out: dict[str, dict[str, Any]] = {}
    for e in evidence:
        if e.feature is None:
            continue
        entry = out.setdefault(e.feature, {"drifted": False})
        if e.method.endswith("psi"):
            entry["psi"] = e.statistic
        else:
            entry["ks"], entry["p_value"], entry["ks_threshold"] = e.statistic, e.p_value, e.threshold
        entry["drifted"] = entry["drifted"] or e.drifted
    return out


def score_summary(evidence: Sequence[Evidence], window_size: int) -> dict[str, Any] | None:
    if not evidence:
        return None
    out: dict[str, Any] = {"window_size": window_size, "drifted": any(e.drifted for e in evidence)}
    for e in evidence:
        if e.method == "score_psi":
            out["psi"] = e.statistic
        else:
            out["ks"], out["p_value"], out["ks_threshold"] = e.statistic, e.p_value, e.threshold
    return out


def detection_summary(d: Detection | None) -> dict[str, Any] | None:
    if d is None:
        return None
    return {
        "kind": d.kind,
        "method": d.method,
        "statistic": d.statistic,
        "threshold": d.threshold,
        "features": d.features,
    }


class Monitoring:
    """The monitors of the current champions, and the joins between predictions and labels."""

    def __init__(
        self,
        *,
        policy: DriftPolicy,
        producer: EventProducer,
        store: MonitoringStore,
        artifacts: Callable[[str], ArtifactStore],
        resolve_after: int = 3,
        join_capacity: int = 50_000,
    ) -> None:
        self.policy = policy
        self.producer = producer
        self.store = store
        self.artifacts = artifacts
        self.resolve_after = resolve_after
        self.join_capacity = join_capacity
        self.monitors: dict[str, ModelMonitor] = {}
        self.labels = BoundedMap(join_capacity)  # labelled event id → label, waiting for its prediction

    async def _retry(self, fn: Callable[[], Awaitable[T]], what: str) -> T:
        result: T = await retry_transient(fn, what=what)
        return result

    # -- models.promoted --------------------------------------------------------------------------

    async def on_replayed(self, history: list[Event]) -> None:
        """Start-up: monitor the latest champion of each model; pick up its open episode, if any."""
        latest: dict[str, Event] = {}
        for event in history:
            if event.value["action"] in ("promote", "rollback"):
                latest[event.value["model_name"]] = event
        for event in latest.values():
            await self._install(event, resolve_previous=False)
        for report in await self._retry(self.store.unpublished, "unpublished drift reports"):
            await self._publish(report["record"], report["episode_id"])
        names = set(self.monitors) | set(await self._retry(self.store.models, "models"))
        for name in sorted(names):
            await self._restore_episode(name)

    async def _restore_episode(self, name: str) -> None:
        report = await self._retry(lambda: self.store.open_episode_of(name), "open episode")
        if report is None:
            return
        monitor = self.monitors.get(name)
        if monitor is not None and monitor.reference.version == report["model_version"]:
            monitor.episode = Episode(report["episode_id"], report["kind"])
            log.info("drift_episode_restored", model=name, episode_id=report["episode_id"])
        else:
            await self._retry(lambda: self.store.resolve(report["episode_id"], "model_changed"), "resolve episode")

    async def on_promoted(self, event: Event) -> None:
        if event.value["action"] in ("promote", "rollback"):
            await self._install(event, resolve_previous=True)

    async def _install(self, event: Event, *, resolve_previous: bool) -> None:
        v = event.value
        name, version = v["model_name"], int(v["version"])
        try:
            metadata = await self.artifacts(v["artifact_bucket"]).get_json(v["metadata_key"], v["metadata_sha256"])
        except Exception as exc:
            if is_transient(exc):
                raise  # an outage: the follower retries
            log.error("reference_unavailable_keeping_previous", model=name, version=version, error=repr(exc)[:500])
            return
        reference = Reference.from_metadata(name, version, metadata, event.event_id)
        self.monitors[name] = ModelMonitor(reference, self.policy, self.resolve_after, self.join_capacity)
        log.info("monitoring_champion", model=name, version=version, features=len(reference.profiles))
        if resolve_previous:
            resolved = await self._retry(lambda: self.store.resolve_open(name, "model_changed"), "resolve episodes")
            if resolved:
                log.info("drift_episodes_closed_model_changed", model=name, episodes=resolved)

    # -- the consumer group -----------------------------------------------------------------------

    async def handle_batch(self, events: list[Event]) -> None:
        for event in events:
            await self.handle(event)

    async def handle(self, event: Event) -> None:
        if event.topic == FEATURES_VECTORS:
            await self.on_vector(event)
        elif event.topic == PREDICTIONS:
            await self.on_prediction(event)
        elif event.topic == LABELS:
            await self.on_label(event)

    async def on_vector(self, event: Event) -> None:
        if not self.monitors:
            IGNORED.labels(FEATURES_VECTORS, "no_champion").inc()
            return
        t = epoch_ms(event.value["event_time"])
        for monitor in list(self.monitors.values()):
            if monitor.add_vector(t, event.value["features"]):
                await self.check(monitor)

    async def on_prediction(self, event: Event) -> None:
        v = event.value
        monitor = self.monitors.get(v["model_name"])
        if monitor is None:
            IGNORED.labels(PREDICTIONS, "unknown_model").inc()
            return
        if v["shadow"] or v["slot"] != "champion" or v["model_version"] != monitor.reference.version:
            IGNORED.labels(PREDICTIONS, "not_the_champion").inc()
            return
        source = v["source_event_id"]
        monitor.add_prediction(source, epoch_ms(v["event_time"]), float(v["score"]), v.get("predicted_class"))
        label = self.labels.get(source)
        if label is not None:
            await self._performance(monitor, monitor.add_label(source, label))

    async def on_label(self, event: Event) -> None:
        source, label = event.value["labelled_event_id"], str(event.value["label"])
        self.labels.put(source, label)
        for monitor in list(self.monitors.values()):
            await self._performance(monitor, monitor.add_label(source, label))

    async def _performance(self, monitor: ModelMonitor, detection: Detection | None) -> None:
        acc = monitor.performance.accuracy
        if acc is not None:
            ROLLING_ACCURACY.labels(monitor.reference.model_name).set(acc)
        if detection is not None:
            await self._detected(monitor, detection)

    # -- checks and episodes ----------------------------------------------------------------------

    def _is_current(self, monitor: ModelMonitor) -> bool:
        return self.monitors.get(monitor.reference.model_name) is monitor

    async def check(self, monitor: ModelMonitor) -> CheckResult | None:
        columns, scores, window = monitor.snapshot()
        result = await asyncio.to_thread(monitor.compute, columns, scores, window)
        name = monitor.reference.model_name
        if not self._is_current(monitor):
            return None  # the champion changed meanwhile: this window no longer matters
        result = monitor.conclude(result)
        CHECKS.labels(name).inc()
        features = evidence_by_feature(result.inputs)
        for feature, stats in features.items():
            FEATURE_PSI.labels(name, feature).set(stats.get("psi", 0.0))
        summary = {
            "check_id": derived_event_id("check", name, monitor.reference.version, result.records_seen, window[1]),
            "model_name": name,
            "model_version": monitor.reference.version,
            "window_start_ms": window[0],
            "window_end_ms": window[1],
            "window_size": window[2],
            "records_seen": result.records_seen,
            "drifted": result.detection is not None,
            "kind": result.detection.kind if result.detection else None,
            "features": features,
            "score": score_summary(result.scores, result.score_window),
            "performance": result.performance,
        }
        await self._retry(lambda: self.store.save_summary(summary), "save window summary")
        if result.detection is not None:
            await self._detected(monitor, result.detection)
        resolved = monitor.after_check(result)
        if resolved is not None:
            await self._retry(lambda: self.store.resolve(resolved.episode_id, "back_to_normal"), "resolve episode")
            log.info("drift_episode_resolved", model=name, episode_id=resolved.episode_id)
        return result

    async def _detected(self, monitor: ModelMonitor, detection: Detection) -> None:
        name = monitor.reference.model_name
        if not monitor.should_open(detection):
            assert monitor.episode is not None
            episode_id = monitor.episode.episode_id
            await self._retry(lambda: self.store.touch(episode_id), "touch episode")
            return
        episode_id = str(uuid.uuid4())
        event_id = derived_event_id(DRIFT_DETECTED, episode_id)
        record = {
            # A drift episode starts a causal chain: its correlation id is its own event id.
            **self.producer.envelope(event_id=event_id, correlation_id=event_id),
            "episode_id": episode_id,
            "kind": detection.kind,
            "method": detection.method,
            "statistic": float(detection.statistic),
            "threshold": float(detection.threshold),
            "window_start": as_utc(detection.window_start_ms),
            "window_end": as_utc(detection.window_end_ms),
            "window_size": detection.window_size,
            "onset": as_utc(detection.onset_ms) if detection.onset_ms is not None else None,
            "features": detection.features,
            "model_name": name,
            "model_version": monitor.reference.version,
            "evidence": [e.as_record() for e in detection.evidence],
        }
        stored = {
            k: epoch_ms(x) if k in ("event_time", "produced_at", "window_start", "window_end", "onset") and x else x
            for k, x in record.items()
        }
        opened = await self._retry(lambda: self.store.open_episode(record, stored), "open episode")
        if not opened:  # another instance opened one for this model: join it
            report = await self._retry(lambda: self.store.open_episode_of(name), "open episode")
            if report is not None:
                monitor.episode = Episode(report["episode_id"], report["kind"])
            return
        monitor.episode = Episode(episode_id, detection.kind)
        await self._publish(stored, episode_id)
        DRIFTS.labels(name, detection.kind).inc()
        log.warning(
            "drift_detected",
            model=name,
            version=monitor.reference.version,
            kind=detection.kind,
            method=detection.method,
            statistic=round(detection.statistic, 6),
            threshold=detection.threshold,
            features=detection.features,
            episode_id=episode_id,
        )

    async def _publish(self, record: dict[str, Any], episode_id: str) -> None:
        await self._retry(lambda: self.producer.publish(DRIFT_DETECTED, record), "publish drift.detected")
        await self._retry(lambda: self.store.mark_published(episode_id), "mark published")

    # -- reading ----------------------------------------------------------------------------------

    def state(self) -> list[dict[str, Any]]:
        """Current statistics per model (for GET /v1/drift)."""
        out = []
        for name, m in sorted(self.monitors.items()):
            last = m.last_check
            out.append(
                {
                    "model_name": name,
                    "model_version": m.reference.version,
                    "promotion_event_id": m.reference.promotion_event_id,
                    "reference_accuracy": m.reference.accuracy,
                    "records_seen": m.records_seen,
                    "windows": {
                        "vectors": len(m.vectors),
                        "scores": len(m.scores),
                        "labelled": len(m.performance.outcomes),
                    },
                    "performance": m.performance.summary(),
                    "episode": None
                    if m.episode is None
                    else {
                        "episode_id": m.episode.episode_id,
                        "kind": m.episode.kind,
                        "clean_checks": m.episode.clean_checks,
                    },
                    "last_check": None
                    if last is None
                    else {
                        "records_seen": last.records_seen,
                        "window_start": as_utc(last.window[0]).isoformat(),
                        "window_end": as_utc(last.window[1]).isoformat(),
                        "window_size": last.window[2],
                        "features": evidence_by_feature(last.inputs),
                        "score": score_summary(last.scores, last.score_window),
                        "drift": detection_summary(last.detection),
                    },
                }
            )
        return out
