"""What a check leaves behind and how a drift episode is recorded and published.

Pure shaping first (:func:`window_summary`, :func:`drift_detected`); then :class:`Episodes`, the
episode's I/O in its order: the report is stored (``drift_reports``; a partial unique index allows
one open episode per model across instances), then ``drift.detected`` is published, then the report
is marked published (an unpublished one is re-sent at start-up). Side effects are retried here
until they succeed, so the consumer never replays a batch into windows that already hold it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from prometheus_client import Counter, Gauge

from driftline.catalog import DRIFT_DETECTED
from driftline.events import Envelope, as_utc, derived_event_id
from driftline.logging import get_logger
from driftline.producer import EventProducer
from driftline.records import DriftDetected
from driftline.retry import retry_transient
from driftline_monitoring.drift import (
    CheckResult,
    Detection,
    Episode,
    Evidence,
    ModelMonitor,
    Reference,
    WindowSummary,
)
from driftline_monitoring.store import MonitoringStore

log = get_logger(__name__)

T = TypeVar("T")

CHECKS = Counter("driftline_monitoring_checks_total", "Window checks run", ["model"])
DRIFTS = Counter("driftline_monitoring_drift_events_total", "drift.detected events published", ["model", "kind"])
FEATURE_PSI = Gauge("driftline_monitoring_psi", "PSI of the last check", ["model", "feature"])


# -- pure shaping ---------------------------------------------------------------------------------


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
    """Window-summary form of the score tests: {window_size, psi, ks, p_value, ks_threshold, drifted}."""
    if not evidence:
        return None
    out: dict[str, Any] = {"window_size": window_size, "drifted": any(e.drifted for e in evidence)}
    for e in evidence:
        if e.method == "score_psi":
            out["psi"] = e.statistic
        else:
            out["ks"], out["p_value"], out["ks_threshold"] = e.statistic, e.p_value, e.threshold
    return out


def window_summary(reference: Reference, result: CheckResult) -> WindowSummary:
    """The summary of a concluded check; its id derives from the window, so a replayed check is
    stored once."""
    start, end, size = result.window
    name, version = reference.model_name, reference.version
    return WindowSummary(
        check_id=derived_event_id("check", name, version, result.records_seen, end),
        model_name=name,
        model_version=version,
        window_start=as_utc(start),
        window_end=as_utc(end),
        window_size=size,
        records_seen=result.records_seen,
        drifted=result.detection is not None,
        kind=result.detection.kind if result.detection else None,
        features=evidence_by_feature(result.inputs),
        score=score_summary(result.scores, result.score_window),
        performance=result.performance,
    )


def drift_detected(env: Envelope, episode_id: str, reference: Reference, detection: Detection) -> DriftDetected:
    """The one ``drift.detected`` of an episode."""
    return DriftDetected(
        **env,
        episode_id=episode_id,
        kind=detection.kind,
        method=detection.method,
        statistic=float(detection.statistic),
        threshold=float(detection.threshold),
        window_start=as_utc(detection.window_start_ms),
        window_end=as_utc(detection.window_end_ms),
        window_size=detection.window_size,
        onset=as_utc(detection.onset_ms) if detection.onset_ms is not None else None,
        features=tuple(detection.features),
        model_name=reference.model_name,
        model_version=reference.version,
        evidence=tuple(e.as_record() for e in detection.evidence),
    )


# -- the episode's I/O ----------------------------------------------------------------------------


class Episodes:
    """Stores checks and episodes, publishes one ``drift.detected`` per episode."""

    def __init__(self, store: MonitoringStore, producer: EventProducer, *, touch_every_s: float = 5.0) -> None:
        self.store = store
        self.producer = producer
        self.touch_every_s = touch_every_s

    async def _retry(self, fn: Callable[[], Awaitable[T]], what: str) -> T:
        result: T = await retry_transient(fn, what=what)
        return result

    async def resend_unpublished(self) -> None:
        """Start-up: publish the reports stored before a crash but never acknowledged (same event id)."""
        for record in await self._retry(self.store.unpublished, "unpublished drift reports"):
            await self._publish(record)

    async def restore(self, name: str, monitor: ModelMonitor | None) -> None:
        """Start-up: the model's open episode goes on when its version is the one monitored, and
        is closed (``model_changed``) otherwise."""
        report = await self._retry(lambda: self.store.open_episode_of(name), "open episode")
        if report is None:
            return
        if monitor is not None and monitor.reference.version == report.model_version:
            monitor.episode = Episode(report.episode_id, report.kind)
            log.info("drift_episode_restored", model=name, episode_id=report.episode_id)
        else:
            await self._retry(lambda: self.store.resolve(report.episode_id, "model_changed"), "resolve episode")

    async def model_changed(self, name: str) -> None:
        """Another champion of ``name`` is seen serving: its open episodes close."""
        resolved = await self._retry(lambda: self.store.resolve_open(name, "model_changed"), "resolve episodes")
        if resolved:
            log.info("drift_episodes_closed_model_changed", model=name, episodes=resolved)

    async def checked(self, monitor: ModelMonitor, result: CheckResult) -> None:
        """A concluded check: its summary is stored, its drift opens or refreshes the episode, and
        enough clean checks in a row resolve it (``back_to_normal``)."""
        summary = window_summary(monitor.reference, result)
        name = summary.model_name
        CHECKS.labels(name).inc()
        for feature, stats in summary.features.items():
            FEATURE_PSI.labels(name, feature).set(stats.get("psi", 0.0))
        await self._retry(lambda: self.store.save_summary(summary), "save window summary")
        if result.detection is not None:
            await self.detected(monitor, result.detection)
        await self.touch(monitor, force=True)  # detections since the last write, one write per check
        resolved = monitor.after_check(result)
        if resolved is not None:
            await self._retry(lambda: self.store.resolve(resolved.episode_id, "back_to_normal"), "resolve episode")
            log.info("drift_episode_resolved", model=name, episode_id=resolved.episode_id)

    async def touch(self, monitor: ModelMonitor, *, force: bool = False) -> None:
        """Write the open episode's last detection time, when due (see :meth:`Episode.take_seen`)."""
        episode = monitor.episode
        if episode is None:
            return
        seen_at = episode.take_seen(time.monotonic(), self.touch_every_s, force=force)
        if seen_at is not None:
            await self._retry(lambda: self.store.touch(episode.episode_id, seen_at), "touch episode")

    async def detected(self, monitor: ModelMonitor, detection: Detection) -> None:
        """A detection opens an episode (stored, published) when none is open, else refreshes it."""
        name = monitor.reference.model_name
        if not monitor.should_open(detection):
            assert monitor.episode is not None
            monitor.episode.seen()
            await self.touch(monitor)
            return
        detection = monitor.with_onset(detection)  # before any await: the windows are as detected
        episode_id = str(uuid.uuid4())
        event_id = derived_event_id(DRIFT_DETECTED, episode_id)
        # A drift episode starts a causal chain: its correlation id is its own event id.
        env = self.producer.envelope(event_id=event_id, correlation_id=event_id)
        record = drift_detected(env, episode_id, monitor.reference, detection)
        opened = await self._retry(lambda: self.store.open_episode(record), "open episode")
        if not opened:  # another instance opened one for this model: join it
            report = await self._retry(lambda: self.store.open_episode_of(name), "open episode")
            if report is not None:
                monitor.episode = Episode(report.episode_id, report.kind)
            return
        monitor.episode = Episode(episode_id, detection.kind)
        await self._publish(record)
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

    async def _publish(self, record: DriftDetected) -> None:
        await self._retry(lambda: self.producer.publish(DRIFT_DETECTED, record), "publish drift.detected")
        await self._retry(lambda: self.store.mark_published(record.episode_id), "mark published")
