"""What monitoring does with each record: follow the champion that serves, feed its monitor's
windows, run the checks. Which promotion serves is decided in :mod:`serving`, the tests in
:mod:`drift`, what a check and an episode store and publish in :mod:`episodes`.

Inputs: ``models.promoted`` and ``deployments.status`` (followed in full by every instance: the
champions, their reference profiles, and what deployment actually serves), and, in the consumer
group, ``features.vectors``, ``predictions`` and ``labels``. Predictions of the champion (never
the shadow's) are joined with labels by the raw event id (``source_event_id`` =
``labelled_event_id``), whichever arrives first; both sides wait in bounded maps. The three topics
are keyed by entity, so with the range assignor a record and its label land on the same instance.
Predictions and labels also feed the challenger verdicts of :mod:`comparison` (shadow and canary).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from prometheus_client import Counter, Gauge

from driftline.artifacts import ArtifactStore
from driftline.catalog import FEATURES_VECTORS, PREDICTIONS
from driftline.consumer import BatchHandler, Routes, dispatch
from driftline.events import Event, epoch_ms
from driftline.logging import get_logger
from driftline.project import DriftPolicy, PromotionPolicy
from driftline.records import (
    ChallengerCompared,
    DeploymentStatusChanged,
    FeatureVectorComputed,
    LabelRecorded,
    ModelPromoted,
    ModelRejected,
    PredictionMade,
    TrainingFailed,
)
from driftline.retry import retry_transient
from driftline_monitoring.comparison import (
    CANARY,
    SHADOW,
    CanaryJoin,
    Pair,
    ShadowJoin,
    canary_decisive,
    compared,
    decisive,
)
from driftline_monitoring.drift import BoundedMap, CheckResult, Detection, ModelMonitor, Reference
from driftline_monitoring.episodes import Episodes, episode_correlation_id
from driftline_monitoring.serving import KEPT_PROMOTIONS, Serving, Switch, is_champion, is_serving

log = get_logger(__name__)

T = TypeVar("T")

IGNORED = Counter("driftline_monitoring_ignored_total", "Records not monitored", ["topic", "reason"])
ROLLING_ACCURACY = Gauge("driftline_monitoring_rolling_accuracy", "Rolling accuracy of the champion", ["model"])


def in_offset_order(routes: Routes) -> BatchHandler:
    """The consumer group's batch handler: a partition's batch record by record, each through the
    route of its topic."""
    handle = dispatch(routes)

    async def batch(events: list[Event[Any]]) -> None:
        for event in events:
            await handle(event)

    return batch


ModelPolicy = tuple[DriftPolicy, int | None, int]  # drift policy, training's max_examples and min_examples


class Monitoring:
    """The monitors of the champions that serve, and the joins between predictions and labels."""

    def __init__(
        self,
        *,
        policy: DriftPolicy,
        episodes: Episodes,
        artifacts: Callable[[str], ArtifactStore],
        resolve_after: int = 3,
        join_capacity: int = 50_000,
        max_examples: int | None = None,
        min_examples: int = 0,
        policies: Callable[[str], ModelPolicy | None] | None = None,
        model_of: Callable[[FeatureVectorComputed], str | None] | None = None,
        promotion_of: Callable[[str], PromotionPolicy | None] | None = None,
        publish_verdict: Callable[[ChallengerCompared], Awaitable[object]] | None = None,
    ) -> None:
        """``policy``, ``max_examples`` and ``min_examples`` are those of a model that ``policies``
        (its project's drift policy and training limits, by model name) does not know; ``model_of``
        names the model whose champion watches a vector (its project's; None: every monitor)."""
        self.policy = policy
        self.policies = policies or (lambda _name: None)
        self.model_of = model_of or (lambda _vector: None)
        self.max_examples = max_examples
        self.min_examples = min_examples
        self.episodes = episodes
        self.artifacts = artifacts
        self.resolve_after = resolve_after
        self.join_capacity = join_capacity
        self.serving = Serving()
        self.monitors: dict[str, ModelMonitor] = {}
        self.labels: BoundedMap[str] = BoundedMap(join_capacity)  # labelled event id → label, awaiting its prediction
        self.shadow = ShadowJoin(join_capacity)  # champion and challenger on the same labelled events
        self.promotion_of = promotion_of or (lambda _name: None)
        self.publish_verdict = publish_verdict
        self.verdicts: dict[Pair, ChallengerCompared] = {}  # announced on models.compared
        self.canary = CanaryJoin(join_capacity)  # the two arms of each model's active canary
        self.canary_verdicts: dict[Pair, ChallengerCompared] = {}  # announced on models.compared
        self.references: BoundedMap[Reference] = BoundedMap(4 * KEPT_PROMOTIONS)  # promotion event id → Reference
        self._switching = asyncio.Lock()

    async def _retry(self, fn: Callable[[], Awaitable[T]], what: str) -> T:
        result: T = await retry_transient(fn, what=what)
        return result

    # -- models.promoted and deployments.status ---------------------------------------------------

    async def on_replayed(self, history: Sequence[Event[ModelPromoted | DeploymentStatusChanged]]) -> None:
        """Start-up: monitor the champion each model serves (see :meth:`Serving.at_start`); the
        active canaries; re-send unpublished reports; pick up the open episodes."""
        serving = [e.record for e in history if isinstance(e.record, ModelPromoted | DeploymentStatusChanged)]
        self.canary.rebuild(r for r in serving if isinstance(r, ModelPromoted))
        for promotion in self.serving.at_start(serving):
            reference = await self._reference(promotion)
            if reference is not None:
                self._monitor(promotion, reference)
        await self.episodes.resend_unpublished()
        names = set(self.monitors) | set(await self._retry(self.episodes.store.models, "models"))
        for name in sorted(names):
            await self.episodes.restore(name, self.monitors.get(name))

    async def on_promoted(self, promotion: ModelPromoted) -> None:
        """A new champion is announced: monitored at once if the model has no monitor yet,
        otherwise pending until it is seen serving. Its reference is fetched now. Every action
        starts or ends the model's canary comparison first."""
        self._follow_canary(promotion)
        if not is_champion(promotion):
            return  # shadow or canary: the challenger is not monitored
        self.serving.remember(promotion)
        reference = await self._reference(promotion)
        if reference is None:
            return
        if self.serving.follows_at_once(promotion):
            await self._switch(promotion, reference, why="promoted")
            return
        log.info(
            "champion_pending_until_serving",
            model=promotion.model_name,
            version=promotion.version,
            monitored_version=self.monitors[promotion.model_name].reference.version,
        )

    def _follow_canary(self, promotion: ModelPromoted) -> None:
        ended = self.canary.follow(promotion)
        started = self.canary.active.get(promotion.model_name) if promotion.action == CANARY else None
        if promotion.action == CANARY and started is None:
            log.warning("canary_without_champion", model=promotion.model_name, version=promotion.version)
        for event, canary in (("canary_ended", ended), ("canary_compared_from_now", started)):
            if canary is not None:
                log.info(
                    event,
                    model=promotion.model_name,
                    version=canary.version,
                    champion=canary.champion,
                    traffic_fraction=canary.traffic_fraction,
                    by=promotion.action,
                )

    async def on_run_outcome(self, record: ModelRejected | TrainingFailed) -> None:
        """A run's candidate was rejected, or the run failed: if an episode's attempt asked for it,
        the episode may ask again (see :meth:`Episode.waiting_for_outcome`; a promotion is the
        outcome too, see :meth:`ModelMonitor.carry`)."""
        monitor = self.monitors.get(record.model_name)
        episode = monitor.episode if monitor is not None else None
        if episode is None:
            return
        if isinstance(record, TrainingFailed):
            ours = record.drift_episode_id == episode.episode_id
        else:
            ours = record.correlation_id == episode_correlation_id(episode.episode_id)
        if ours and episode.awaiting:
            episode.outcome()
            log.info(
                "drift_attempt_outcome",
                model=record.model_name,
                episode_id=episode.episode_id,
                outcome="failed" if isinstance(record, TrainingFailed) else "rejected",
            )

    async def on_deployment_status(self, status: DeploymentStatusChanged) -> None:
        """Deployment reports what it did with a promotion: a champion now serving is monitored; a
        refused one changes nothing."""
        if status.slot != "champion":
            return
        if not is_serving(status):
            log.info(
                "champion_not_serving_monitor_kept",
                model=status.model_name,
                version=status.version,
                status=status.status,
            )
            return
        promotion = self.serving.seen_serving(status)
        if promotion is None:
            return
        reference = await self._reference(promotion)
        if reference is not None:
            await self._switch(promotion, reference, why=f"deployment {status.status} ({status.instance_id})")

    async def _switch(
        self, promotion: ModelPromoted, reference: Reference, *, why: str, forward_only: bool = False
    ) -> None:
        """Monitor the champion of ``promotion`` from now on: new windows; the open episode of the
        previous champion, if any, goes on with the new one (it ends when served performance is back)."""
        name = reference.model_name
        async with self._switching:  # a status and a prediction may show the same swap at once
            current = self.monitors.get(name)
            if self.serving.switch(promotion, forward_only=forward_only) is not Switch.NEW_MONITOR:
                return
            monitor = self._monitor(promotion, reference)
            monitor.carry(current.episode if current else None)
            log.info(
                "monitoring_champion",
                model=name,
                version=reference.version,
                previous=current.reference.version if current else None,
                episode_id=monitor.episode.episode_id if monitor.episode else None,
                why=why,
            )

    def _monitor(self, promotion: ModelPromoted, reference: Reference) -> ModelMonitor:
        own = self.policies(reference.model_name)
        policy, max_examples, min_examples = own or (self.policy, self.max_examples, self.min_examples)
        promotion_policy = self.promotion_of(reference.model_name)
        monitor = self.monitors[reference.model_name] = ModelMonitor(
            reference,
            policy,
            self.resolve_after,
            self.join_capacity,
            max_examples,
            min_examples,
            refresh_confidence=promotion_policy.refresh_confidence if promotion_policy is not None else 0.0,
        )
        self.serving.follow(promotion)
        return monitor

    async def _reference(self, promotion: ModelPromoted) -> Reference | None:
        """The reference profile of a promotion (from its metadata document, cached)."""
        cached = self.references.get(promotion.event_id)
        if cached is not None:
            return cached
        p = promotion
        try:
            metadata = await self._retry(
                lambda: self.artifacts(p.artifact_bucket).get_json(p.metadata_key, p.metadata_sha256),
                "reference profile",
            )
        except Exception as exc:
            log.error("reference_unavailable", model=p.model_name, version=p.version, error=repr(exc)[:500])
            return None
        reference = Reference.from_metadata(p.model_name, p.version, metadata, p.event_id)
        self.references.put(p.event_id, reference)
        return reference

    # -- the consumer group -----------------------------------------------------------------------

    async def on_vector(self, vector: FeatureVectorComputed) -> None:
        if not self.monitors:
            IGNORED.labels(FEATURES_VECTORS, "no_champion").inc()
            return
        t = epoch_ms(vector.event_time)
        name = self.model_of(vector)
        if name is not None:
            monitor = self.monitors.get(name)
            if monitor is None:
                IGNORED.labels(FEATURES_VECTORS, "no_champion").inc()
            elif monitor.add_vector(t, vector.features):
                await self.check(monitor)
            return
        for monitor in list(self.monitors.values()):
            if monitor.add_vector(t, vector.features):
                await self.check(monitor)

    async def on_prediction(self, prediction: PredictionMade) -> None:
        p = prediction
        if p.predicted_class is not None:
            pair = self.shadow.add_prediction(
                p.source_event_id, p.model_name, p.model_version, p.slot, p.predicted_class
            )
            if pair is not None:
                await self._judge(pair)
            arms = self.canary.add_prediction(
                p.source_event_id, p.model_name, p.model_version, p.slot, p.predicted_class
            )
            if arms is not None:
                await self._judge_canary(arms)
        monitor = self.monitors.get(p.model_name)
        if monitor is None:
            IGNORED.labels(PREDICTIONS, "unknown_model").inc()
            return
        if p.shadow or p.slot != "champion":
            IGNORED.labels(PREDICTIONS, "not_the_champion").inc()
            return
        if p.model_version != monitor.reference.version:
            serving = await self._seen_predicting(p.model_name, p.model_version)
            if serving is None:  # an older champion's, still in flight, or one never promoted
                IGNORED.labels(PREDICTIONS, "not_the_champion").inc()
                return
            monitor = serving
        monitor.add_prediction(p.source_event_id, epoch_ms(p.event_time), p.score, p.predicted_class)
        label = self.labels.get(p.source_event_id)
        if label is not None:
            await self._performance(monitor, monitor.add_label(p.source_event_id, label))

    async def _seen_predicting(self, name: str, version: int) -> ModelMonitor | None:
        """The monitor of ``version`` once a champion prediction showed it serving, if it is a
        pending promotion; else None."""
        promotion = self.serving.seen_predicting(name, version)
        reference = None if promotion is None else await self._reference(promotion)
        if promotion is None or reference is None:
            return None
        await self._switch(promotion, reference, why="its predictions", forward_only=True)
        monitor = self.monitors.get(name)
        return monitor if monitor is not None and monitor.reference.version == version else None

    async def on_label(self, label: LabelRecorded) -> None:
        source, value = label.labelled_event_id, str(label.label)
        self.labels.put(source, value)
        pair = self.shadow.add_label(source, value)
        if pair is not None:
            await self._judge(pair)
        arms = self.canary.add_label(source, value)
        if arms is not None:
            await self._judge_canary(arms)
        for monitor in list(self.monitors.values()):
            if source in monitor.predictions:  # only the model that predicted the event joins it
                await self._performance(monitor, monitor.add_label(source, value))

    async def _judge(self, pair: Pair) -> None:
        """Announce a shadow verdict that the model's promotion policy finds decisive (once)."""
        if self.publish_verdict is None or pair in self.verdicts:
            return
        summary = decisive(self.shadow.counts[pair], self.promotion_of(pair[0]) or PromotionPolicy())
        if summary is not None:
            await self._announce(self.verdicts, pair, compared(SHADOW, pair, summary))

    async def _judge_canary(self, comparison: Pair) -> None:
        """Announce the verdict of the model's active canary once the model's promotion policy finds
        it decisive (once; an ended canary's late labels are counted, never announced)."""
        if self.publish_verdict is None or comparison in self.canary_verdicts or not self.canary.is_active(comparison):
            return
        policy = self.promotion_of(comparison[0]) or PromotionPolicy()
        summary = canary_decisive(self.canary.counts[comparison], policy)
        if summary is not None:
            record = compared(CANARY, comparison, summary, self.canary.fractions.get(comparison))
            await self._announce(self.canary_verdicts, comparison, record)

    async def _announce(
        self, announced: dict[Pair, ChallengerCompared], pair: Pair, record: ChallengerCompared
    ) -> None:
        assert self.publish_verdict is not None
        await self.publish_verdict(record)
        announced[pair] = record
        log.info(
            f"{record.mode}_verdict",
            model=record.model_name,
            champion=record.champion_version,
            challenger=record.challenger_version,
            verdict=record.verdict,
            labelled=record.labelled_pairs,
        )

    async def _performance(self, monitor: ModelMonitor, detection: Detection | None) -> None:
        acc = monitor.performance.accuracy
        if acc is not None:
            ROLLING_ACCURACY.labels(monitor.reference.model_name).set(acc)
        if detection is not None:
            await self.episodes.detected(monitor, detection)
        if monitor.episode is not None and self._is_current(monitor):
            await self.episodes.maybe_attempt(monitor)

    def _is_current(self, monitor: ModelMonitor) -> bool:
        return self.monitors.get(monitor.reference.model_name) is monitor

    async def check(self, monitor: ModelMonitor) -> CheckResult | None:
        """The periodic check of a monitor's windows (the tests off the event loop)."""
        columns, scores, window = monitor.snapshot()
        result = await asyncio.to_thread(monitor.compute, columns, scores, window)
        if not self._is_current(monitor):
            return None  # the champion changed meanwhile: this window no longer matters
        result = monitor.conclude(result)
        await self.episodes.checked(monitor, result)
        return result
