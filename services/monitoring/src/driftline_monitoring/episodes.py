"""What a check leaves behind and how a drift episode is recorded and published.

Pure shaping first (:func:`window_summary`, :func:`drift_detected`, :func:`attempt_record`); then
:class:`Episodes`, the episode's I/O in its order: the report is stored (``drift_reports``; a
partial unique index allows one open episode per model across instances), then ``drift.detected``
is published, then the report is marked published (an unpublished one is re-sent at start-up).
A further attempt of the episode (see :class:`driftline_monitoring.drift.Episode`) goes the same
way through ``episode_attempts``: one ``drift.detected`` with the same episode id and correlation
id and ``attempt`` > 1. Side effects are retried here until they succeed, so the consumer never
replays a batch into windows that already hold it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from prometheus_client import Counter, Gauge

from driftline.catalog import DRIFT_DETECTED
from driftline.events import Envelope, as_utc, derived_event_id, epoch_ms
from driftline.logging import get_logger
from driftline.producer import EventProducer
from driftline.records import DriftDetected
from driftline.retry import retry_transient
from driftline_monitoring.drift import (
    PERFORMANCE,
    CheckResult,
    Detection,
    Evidence,
    ModelMonitor,
    Reference,
    WindowSummary,
)
from driftline_monitoring.lifecycle import Attempt, Episode
from driftline_monitoring.store import MonitoringStore

log = get_logger(__name__)

T = TypeVar("T")

CHECKS = Counter("driftline_monitoring_checks_total", "Window checks run", ["model"])
DRIFTS = Counter("driftline_monitoring_drift_events_total", "drift.detected events published", ["model", "kind"])
ATTEMPTS = Counter(
    "driftline_monitoring_episode_attempts_total", "Further training requests of open episodes", ["model", "reason"]
)
RESOLVED = Counter("driftline_monitoring_episodes_resolved_total", "Episodes ended", ["model", "resolution"])
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


def drift_detected(
    env: Envelope, episode_id: str, reference: Reference, detection: Detection, labelled_since_onset: int | None = None
) -> DriftDetected:
    """The ``drift.detected`` that opens an episode."""
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
        labelled_since_onset=labelled_since_onset,
    )


def episode_correlation_id(episode_id: str) -> str:
    """An episode's causal chain: the event id of the detection that opened it."""
    return derived_event_id(DRIFT_DETECTED, episode_id)


def attempt_record(env: Envelope, episode_id: str, monitor: ModelMonitor, attempt: Attempt) -> DriftDetected:
    """The ``drift.detected`` of a further attempt: the evidence is the serving model's performance
    (still degraded) or the grown post-drift labelled set (consolidation)."""
    perf = monitor.performance
    outcomes = perf.outcomes
    start, end = (outcomes[0][0], outcomes[-1][0]) if outcomes else (0, 0)
    method = "accuracy_drop" if attempt.reason == "still_degraded" else "labelled_since_onset"
    evidence = Evidence(None, method, attempt.statistic, attempt.threshold, None, True)
    return DriftDetected(
        **env,
        episode_id=episode_id,
        kind=PERFORMANCE,
        method=method,
        statistic=float(attempt.statistic),
        threshold=float(attempt.threshold),
        window_start=as_utc(start),
        window_end=as_utc(end),
        window_size=len(outcomes),
        onset=as_utc(attempt.onset_ms) if attempt.onset_ms is not None else None,
        features=(),
        model_name=monitor.reference.model_name,
        model_version=monitor.reference.version,
        evidence=(evidence.as_record(),),
        attempt=attempt.number,
        reason=attempt.reason,
        labelled_since_onset=attempt.labelled_since_onset,
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
        """Start-up: the model's open episode goes on, on the monitored champion (episodes span
        models), with the attempts it made. Its label counts start again from zero: the next retry
        waits a full spacing (conservative; the windows are rebuilt from new records too)."""
        if monitor is None:
            return
        report = await self._retry(lambda: self.store.open_episode_of(name), "open episode")
        if report is None:
            return
        episode = Episode(
            report.episode_id,
            report.kind,
            onset_ms=None if report.onset is None else epoch_ms(report.onset),
            attempts=report.attempts,
            performance_onset=report.kind == PERFORMANCE,
            awaiting=False,  # an outcome that came while monitoring was down is not known
        )
        monitor.carry(episode)
        episode.consolidated_to = max(episode.consolidated_to, report.consolidated_to)
        log.info("drift_episode_restored", model=name, episode_id=report.episode_id, attempts=report.attempts)

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
        ended = monitor.after_check(result)
        if ended is not None:
            episode, resolution = ended
            await self._retry(lambda: self.store.resolve(episode.episode_id, resolution), "resolve episode")
            RESOLVED.labels(name, resolution).inc()
            log.info(
                "drift_episode_resolved",
                model=name,
                episode_id=episode.episode_id,
                resolution=resolution,
                attempts=episode.attempts,
            )

    async def maybe_attempt(self, monitor: ModelMonitor) -> Attempt | None:
        """After a joined outcome: the open episode's further training request, when one is due."""
        episode = monitor.episode
        attempt = monitor.due_attempt()
        if episode is None or attempt is None:
            return None
        episode.took(attempt)  # before any await: the next outcome does not ask again
        correlation = episode_correlation_id(episode.episode_id)
        outcomes = monitor.performance.outcomes
        env = self.producer.envelope(
            event_id=derived_event_id(DRIFT_DETECTED, episode.episode_id, attempt.number),
            correlation_id=correlation,
            event_time=as_utc(outcomes[-1][0]) if outcomes else None,  # the data's time, as the opening's
        )
        env["causation_id"] = correlation
        record = attempt_record(env, episode.episode_id, monitor, attempt)
        await self._retry(lambda: self.store.save_attempt(record), "save episode attempt")
        await self._publish(record)
        ATTEMPTS.labels(record.model_name, attempt.reason).inc()
        log.warning(
            "drift_episode_attempt",
            model=record.model_name,
            version=record.model_version,
            episode_id=episode.episode_id,
            attempt=attempt.number,
            reason=attempt.reason,
            labelled_since_onset=attempt.labelled_since_onset,
            statistic=round(attempt.statistic, 6),
            threshold=round(attempt.threshold, 6),
        )
        return attempt

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
        episode = monitor.open(episode_id, detection)
        event_id = episode_correlation_id(episode_id)
        # A drift episode starts a causal chain: its correlation id is its own event id.
        # Its event time is the data's (the drifted window's last record), as for every record
        # derived from the data: training's cooldown compares it with the examples' event times.
        env = self.producer.envelope(
            event_id=event_id, correlation_id=event_id, event_time=as_utc(detection.window_end_ms)
        )
        record = drift_detected(env, episode_id, monitor.reference, detection, episode.labelled_since_onset)
        opened = await self._retry(lambda: self.store.open_episode(record), "open episode")
        if not opened:  # another instance opened one for this model: join it
            monitor.episode = None
            await self.restore(name, monitor)
            return
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
        await self._retry(lambda: self.store.mark_published(record.episode_id, record.attempt), "mark published")
