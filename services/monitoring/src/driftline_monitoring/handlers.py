"""What monitoring does with each record: feed the windows of the champion's monitor, run the
checks, persist what they found, and publish one ``drift.detected`` per drift episode.

Inputs: ``models.promoted`` and ``deployments.status`` (followed in full by every instance: the
champions, their reference profiles, and what deployment actually serves), and, in the consumer
group, ``features.vectors``, ``predictions`` and ``labels``. Predictions of the champion (never
the shadow's) are joined with labels by the raw event id (``source_event_id`` =
``labelled_event_id``), whichever arrives first; both sides wait in bounded maps. The three topics
are keyed by entity, so with the range assignor a record and its label land on the same instance.

Which model is monitored: the one serving, not merely the one promoted. A promotion is only
announced; deployment may refuse it (an artifact that fails its digest, a model that does not
load) and keep serving the previous champion. So a promotion waits (``pending``) and the monitor
switches to it when the new version is seen serving: a champion prediction of that version, or
a ``deployments.status`` ``loaded``/``rolled_back`` of the champion slot caused by it, whichever
comes first. A refused promotion leaves the current monitor, its windows and its open episode as
they are. The first promotion of a model is monitored at once (nothing else could be serving).

Side effects (PostgreSQL, Kafka) are retried here until they succeed, so the consumer never
replays a batch into windows that already hold it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from prometheus_client import Counter, Gauge

from driftline.artifacts import ArtifactStore
from driftline.catalog import DEPLOYMENTS_STATUS, DRIFT_DETECTED, FEATURES_VECTORS, LABELS, PREDICTIONS
from driftline.events import Event, as_utc, derived_event_id, epoch_ms
from driftline.kafka import EventProducer, retry_transient
from driftline.logging import get_logger
from driftline.project import DriftPolicy
from driftline_monitoring.drift import BoundedMap, CheckResult, Detection, Episode, Evidence, ModelMonitor, Reference
from driftline_monitoring.store import MonitoringStore

log = get_logger(__name__)

T = TypeVar("T")

CHAMPION_ACTIONS = ("promote", "rollback")
SERVING = ("loaded", "rolled_back")  # deployments.status of a champion that now serves
KEPT_PROMOTIONS = 20  # per model: the promotions a status or a prediction can still point at

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
        touch_every_s: float = 5.0,
    ) -> None:
        self.policy = policy
        self.producer = producer
        self.store = store
        self.artifacts = artifacts
        self.resolve_after = resolve_after
        self.join_capacity = join_capacity
        self.touch_every_s = touch_every_s
        self.monitors: dict[str, ModelMonitor] = {}
        self.labels = BoundedMap(join_capacity)  # labelled event id → label, waiting for its prediction
        # Per model, its recent champion promotions in order (event id → event); the monitor follows
        # one of them, and those after it are pending until seen serving.
        self.promotions: dict[str, BoundedMap] = {}
        self.followed: dict[str, str] = {}  # model → event id of the promotion its monitor follows
        self.references = BoundedMap(4 * KEPT_PROMOTIONS)  # promotion event id → Reference (fetched)
        self.early_status: dict[str, Event] = {}  # model → a serving status read before its promotion
        self._switching = asyncio.Lock()

    async def _retry(self, fn: Callable[[], Awaitable[T]], what: str) -> T:
        result: T = await retry_transient(fn, what=what)
        return result

    # -- models.promoted and deployments.status ---------------------------------------------------

    async def on_replayed(self, history: list[Event]) -> None:
        """Start-up: monitor the champion each model serves (the promotion named by its latest
        serving status; the latest promotion when deployment never reported); pick up its open
        episode, if any."""
        statuses: dict[str, Event] = {}
        for event in history:
            if event.topic == DEPLOYMENTS_STATUS:
                if _serving_status(event):
                    statuses[event.value["model_name"]] = event
            elif event.value["action"] in CHAMPION_ACTIONS:
                self._remember(event)
        for name, promotions in self.promotions.items():
            status = statuses.get(name)
            serving = self._promotion_named(name, status) if status is not None else None
            event = serving or next(reversed(promotions.values()))
            reference = await self._reference(event)
            if reference is not None:
                self._follow(event, reference)
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

    async def on_followed(self, event: Event) -> None:
        """A live record of the followed topics."""
        if event.topic == DEPLOYMENTS_STATUS:
            await self.on_deployment_status(event)
        else:
            await self.on_promoted(event)

    async def on_promoted(self, event: Event) -> None:
        """A new champion is announced: monitored at once if the model has no monitor yet,
        otherwise pending until it is seen serving. Its reference is fetched now."""
        if event.value["action"] not in CHAMPION_ACTIONS:
            return  # shadow: the challenger is not monitored
        name, version = event.value["model_name"], int(event.value["version"])
        self._remember(event)
        reference = await self._reference(event)
        if reference is None:
            return
        early = self.early_status.get(name)
        if name not in self.monitors or (early is not None and early.value.get("causation_id") == event.event_id):
            self.early_status.pop(name, None)
            await self._switch(event, reference, why="promoted")
            return
        log.info(
            "champion_pending_until_serving",
            model=name,
            version=version,
            monitored_version=self.monitors[name].reference.version,
        )

    async def on_deployment_status(self, event: Event) -> None:
        """Deployment reports what it did with a promotion: a champion now serving is monitored; a
        refused one changes nothing."""
        v = event.value
        name = v["model_name"]
        if v["slot"] != "champion":
            return
        if not _serving_status(event):
            log.info("champion_not_serving_monitor_kept", model=name, version=v["version"], status=v["status"])
            return
        promotion = self._promotion_named(name, event)
        if promotion is None:  # read before its promotion (two topics): act when that arrives
            self.early_status[name] = event
            return
        if self.followed.get(name) == promotion.event_id:
            return
        reference = await self._reference(promotion)
        if reference is not None:
            await self._switch(promotion, reference, why=f"deployment {v['status']} ({v['instance_id']})")

    def _pending(self, name: str) -> list[Event]:
        """The promotions of ``name`` after the one its monitor follows, oldest first."""
        promotions = list(self.promotions.get(name, {}).values())
        ids = [e.event_id for e in promotions]
        followed = self.followed.get(name)
        return promotions[ids.index(followed) + 1 :] if followed in ids else promotions

    async def _serving_evidence(self, name: str, version: int) -> ModelMonitor | None:
        """A champion prediction of ``version``, which the monitor does not follow: the monitor of
        that version if it is a pending promotion (now seen serving), else None. Only forward: an
        older champion's predictions still in flight after a swap change nothing."""
        pending = [e for e in self._pending(name) if int(e.value["version"]) == version]
        if not pending:
            return None
        reference = await self._reference(pending[-1])
        if reference is None:
            return None
        await self._switch(pending[-1], reference, why="its predictions", forward_only=True)
        monitor = self.monitors.get(name)
        return monitor if monitor is not None and monitor.reference.version == version else None

    async def _switch(self, event: Event, reference: Reference, *, why: str, forward_only: bool = False) -> None:
        """Monitor the champion of ``event`` from now on: new windows; the open episode of the
        previous champion, if any, closes (``model_changed``)."""
        name = reference.model_name
        async with self._switching:  # a status and a prediction may show the same swap at once
            current = self.monitors.get(name)
            if self.followed.get(name) == event.event_id:
                return
            if forward_only and event.event_id not in {e.event_id for e in self._pending(name)}:
                return  # meanwhile the monitor moved past it
            if current is not None and current.reference.version == reference.version:
                self.followed[name] = event.event_id  # the same model: keep its windows and episode
                return
            self._follow(event, reference)
            log.info(
                "monitoring_champion",
                model=name,
                version=reference.version,
                previous=current.reference.version if current else None,
                why=why,
            )
            resolved = await self._retry(lambda: self.store.resolve_open(name, "model_changed"), "resolve episodes")
            if resolved:
                log.info("drift_episodes_closed_model_changed", model=name, episodes=resolved)

    def _follow(self, event: Event, reference: Reference) -> None:
        name = reference.model_name
        self.monitors[name] = ModelMonitor(reference, self.policy, self.resolve_after, self.join_capacity)
        self.followed[name] = event.event_id

    def _remember(self, event: Event) -> None:
        name = event.value["model_name"]
        self.promotions.setdefault(name, BoundedMap(KEPT_PROMOTIONS)).put(event.event_id, event)

    def _promotion_named(self, name: str, status: Event) -> Event | None:
        """The promotion a deployment status is about: its cause, else the latest of its version."""
        promotions = self.promotions.get(name, {})
        cause = status.value.get("causation_id")
        if cause in promotions:
            return promotions[cause]
        version = int(status.value["version"])
        same = [e for e in promotions.values() if int(e.value["version"]) == version]
        return same[-1] if same else None

    async def _reference(self, event: Event) -> Reference | None:
        """The reference profile of a promotion (from its metadata document, cached)."""
        cached = self.references.get(event.event_id)
        if cached is not None:
            return cached
        v = event.value
        name, version = v["model_name"], int(v["version"])
        try:
            metadata = await self._retry(
                lambda: self.artifacts(v["artifact_bucket"]).get_json(v["metadata_key"], v["metadata_sha256"]),
                "reference profile",
            )
        except Exception as exc:
            log.error("reference_unavailable", model=name, version=version, error=repr(exc)[:500])
            return None
        reference = Reference.from_metadata(name, version, metadata, event.event_id)
        self.references.put(event.event_id, reference)
        return reference

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
        if v["shadow"] or v["slot"] != "champion":
            IGNORED.labels(PREDICTIONS, "not_the_champion").inc()
            return
        if v["model_version"] != monitor.reference.version:
            serving = await self._serving_evidence(v["model_name"], int(v["model_version"]))
            if serving is None:  # an older champion's, still in flight, or one never promoted
                IGNORED.labels(PREDICTIONS, "not_the_champion").inc()
                return
            monitor = serving
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
        await self._touch(monitor, force=True)  # detections since the last write, one write per check
        resolved = monitor.after_check(result)
        if resolved is not None:
            await self._retry(lambda: self.store.resolve(resolved.episode_id, "back_to_normal"), "resolve episode")
            log.info("drift_episode_resolved", model=name, episode_id=resolved.episode_id)
        return result

    async def _touch(self, monitor: ModelMonitor, *, force: bool = False) -> None:
        """Write the open episode's last detection time (``last_seen_at``), at most every
        ``touch_every_s`` (or now, with ``force``): an open episode may see a detection at every
        label, and each one writing a row would make a label cost a database round trip."""
        episode = monitor.episode
        if episode is None or episode.seen_at is None:
            return
        now = time.monotonic()
        if not force and now - episode.written_at < self.touch_every_s:
            return
        seen_at, episode.seen_at, episode.written_at = episode.seen_at, None, now
        await self._retry(lambda: self.store.touch(episode.episode_id, seen_at), "touch episode")

    async def _detected(self, monitor: ModelMonitor, detection: Detection) -> None:
        name = monitor.reference.model_name
        if not monitor.should_open(detection):
            assert monitor.episode is not None
            monitor.episode.seen()
            await self._touch(monitor)
            return
        detection = monitor.with_onset(detection)  # before any await: the windows are as detected
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
                    # Promoted after it, not (yet) seen serving: refused, or still being deployed.
                    "pending_versions": [int(e.value["version"]) for e in self._pending(name)],
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


def _serving_status(event: Event) -> bool:
    v = event.value
    return bool(v["slot"] == "champion" and v["status"] in SERVING)
