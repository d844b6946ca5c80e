"""What deployment does with its records: apply ``models.promoted`` to the model slots (load off
to the side, swap, announce on ``deployments.status``) and score ``features.vectors`` (the
champion, or its canary for the canary's entities; a shadow challenger beside).

A model that fails any step of its load is announced as ``failed`` and the one serving keeps
serving. The decisions (which slot, what to load at start-up, what to announce) are in
:mod:`driftline_deployment.policy`; the slots in :mod:`driftline_deployment.slots`; the loaders
in :mod:`driftline_deployment.loader`.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from driftline.artifacts import ArtifactStore
from driftline.catalog import DEPLOYMENTS_STATUS, PREDICTIONS
from driftline.events import Event, derived_event_id, now_utc
from driftline.logging import get_logger
from driftline.producer import EventProducer
from driftline.records import DeploymentStatusChanged, FeatureVectorComputed, ModelPromoted, PredictionMade
from driftline.retry import PoisonRecord, is_transient
from driftline_deployment import policy
from driftline_deployment.loader import LoadError, ModelLoader, ThreadLoader
from driftline_deployment.metrics import MODEL_LOADS, PREDICTIONS_MADE, SCORE_SECONDS, SHADOW_ERRORS, UNSCORED
from driftline_deployment.policy import Announcement
from driftline_deployment.scoring import profile_rows, scores_for
from driftline_deployment.slots import LoadedModel, ModelSlots, Served, Split, by_row, canary_rows
from driftline_ml.models import to_matrix

log = get_logger(__name__)


class Deployer:
    """Applies models.promoted: loads, verifies, warms up, swaps, and reports on deployments.status."""

    def __init__(
        self,
        *,
        slots: ModelSlots,
        producer: EventProducer,
        artifacts: Callable[[str], ArtifactStore],
        instance_id: str,
        default_positive_class: str,
        shadow: bool = True,
        fallback_depth: int = 5,
        loader: ModelLoader | None = None,
        serves: Callable[[str], bool] = lambda model_name: True,
    ) -> None:
        self.slots = slots
        self.serves = serves  # whether a model's project is on the projects topic (not deleted)
        self.producer = producer
        self.artifacts = artifacts
        self.instance_id = instance_id
        self.default_positive_class = default_positive_class
        self.shadow = shadow
        self.fallback_depth = fallback_depth
        self.loader: ModelLoader = loader or ThreadLoader()
        self.history: deque[DeploymentStatusChanged] = deque(maxlen=50)  # recent status changes, newest last
        self.announced: set[str] = set()  # event ids of this instance's records on deployments.status
        self.replayed = False

    async def on_replayed(self, history: Sequence[Event[Any]]) -> None:
        """Start-up: load the latest champion (earlier ones if it fails) and challenger per model.

        ``history`` holds models.promoted and deployments.status: what this instance announced
        before a restart is not announced again (each status's event id derives from the
        promotion, the instance, the slot and the status), so a restart that loads the same
        champion adds no second ``loaded``."""
        promotions: list[ModelPromoted] = []
        for e in history:
            if isinstance(e.record, DeploymentStatusChanged):
                await self.on_status(e.record)
            elif isinstance(e.record, ModelPromoted):
                promotions.append(e.record)
        for model_name, plan in policy.plan_from_history(promotions, shadow=self.shadow).items():
            if not self.serves(model_name):
                log.info("model_of_no_project_not_loaded", model=model_name)
                continue
            serving = None
            candidates = plan.fallbacks(self.fallback_depth)
            for p in candidates:
                if await self.apply(p, startup=True):
                    serving = p
                    break
            else:
                if candidates:
                    log.error("no_champion_loadable", model=model_name, tried=len(candidates))
            challenger = plan.challenger_beside(serving)
            if challenger is not None:
                await self.apply(challenger, startup=True)
        self.replayed = True
        self.loader.start()  # later loads: off this process's GIL

    async def on_promoted(self, p: ModelPromoted) -> None:
        await self.apply(p)

    async def on_project_deleted(self, project: str, model_name: str) -> None:
        """A project was deleted: its model stops serving here (each slot announced ``unloaded``,
        caused by the promotion that loaded it); a restart does not load it again."""
        for removed in self.slots.remove(model_name):
            log.info("model_unloaded", model=model_name, version=removed.version, slot=removed.slot, project=project)
            await self._announce(
                removed.promotion,
                policy.Announcement(removed.slot, "unloaded", f"project {project!r} was deleted", removed.version),
            )

    async def on_status(self, status: DeploymentStatusChanged) -> None:
        """A deployments.status record (replayed or live): this instance's are remembered."""
        if status.instance_id == self.instance_id and status.event_id not in self.announced:
            self.announced.add(status.event_id)
            self.history.append(status)

    async def apply(self, p: ModelPromoted, *, startup: bool = False) -> bool:
        """Carry out one promotion; True when the model now serves in its slot (for a
        ``canary_rollback``: when the canary left it)."""
        refusal = policy.refused(p)
        if refusal is not None:
            await self._announce(p, refusal)
            return False
        if p.action == "canary_rollback":
            return await self._withdraw_canary(p)
        slot = policy.slot_for(p.action)
        if p.action == "shadow" and not self.shadow:  # a canary still loads: it serves traffic
            log.info("shadow_disabled_ignoring", model=p.model_name, version=p.version)
            return False
        start = time.perf_counter()
        try:
            model = await self._load(p, slot, startup=startup)
        except Exception as exc:
            if is_transient(exc):
                raise  # an outage: the caller retries; the serving model is untouched
            MODEL_LOADS.labels(slot, "failed").inc()
            reason = f"{type(exc).__name__}: {exc}"
            log.error("model_load_failed", model=p.model_name, version=p.version, reason=reason[:500])
            await self._announce(p, policy.load_failed(p, reason, time.perf_counter() - start))
            return False
        retired = self.slots.install(model)
        log.info("model_swapped", model=model.model_name, version=model.version, slot=slot, seconds=model.load_seconds)
        if retired is not None:
            log.info("challenger_unloaded", model=model.model_name, version=retired.version, champion=model.version)
        announcements = policy.swapped(
            p,
            load_seconds=model.load_seconds,
            retired_version=None if retired is None else retired.version,
            startup=startup,
        )
        MODEL_LOADS.labels(slot, announcements[0].status).inc()
        for announcement in announcements:
            await self._announce(p, announcement)
        return True

    async def _withdraw_canary(self, p: ModelPromoted) -> bool:
        """``canary_rollback``: the challenger slot is emptied if it holds the canary withdrawn
        (announced ``rolled_back``); otherwise there is nothing to withdraw here."""
        removed = self.slots.remove_challenger(p.model_name, p.version)
        if removed is None:
            held = self.slots.challenger(p.model_name)
            log.info(
                "canary_rollback_not_loaded",
                model=p.model_name,
                version=p.version,
                challenger=None if held is None else held.version,
            )
            return False
        log.info("canary_withdrawn", model=p.model_name, version=p.version, mode=removed.mode)
        await self._announce(p, policy.canary_rolled_back(p))
        return True

    async def _load(self, p: ModelPromoted, slot: str, *, startup: bool) -> LoadedModel:
        start = time.perf_counter()
        store = self.artifacts(p.artifact_bucket)
        data = await store.get(p.artifact_key, p.artifact_sha256)
        metadata = await store.get_json(p.metadata_key, p.metadata_sha256)  # the JSON document training wrote
        feature_names = p.feature_names or tuple(str(f) for f in metadata.get("feature_names") or ())
        if not feature_names:
            raise LoadError("the promotion names no features")
        positive = str(metadata.get("positive_class") or self.default_positive_class)
        estimator = await self.loader.load(data, feature_names, positive, startup=startup)
        profiles = (metadata.get("reference_profile") or {}).get("features") or {}
        rows = profile_rows(profiles, feature_names) if isinstance(profiles, dict) else None
        scores = await asyncio.to_thread(scores_for, estimator, positive, len(feature_names), rows)
        return LoadedModel(
            model_name=p.model_name,
            version=p.version,
            slot=slot,
            estimator=estimator,
            feature_names=feature_names,
            classes=tuple(str(c) for c in getattr(estimator, "classes_", metadata.get("classes") or ())),
            positive_class=positive,
            loaded_at=now_utc(),
            load_seconds=time.perf_counter() - start,
            promotion=p,
            scores=scores,
            traffic_fraction=p.traffic_fraction if p.action == "canary" else None,
        )

    async def _announce(self, p: ModelPromoted, a: Announcement) -> None:
        """One deployments.status record caused by the promotion ``p``."""
        record = DeploymentStatusChanged(
            **self.producer.envelope(
                cause=p,
                event_id=derived_event_id("deployment-status", p.event_id, self.instance_id, a.slot, a.status),
            ),
            model_name=p.model_name,
            version=a.version,
            slot=a.slot,
            status=a.status,
            reason=a.reason[:2000],
            instance_id=self.instance_id,
            load_seconds=a.load_seconds,
        )
        if record.event_id in self.announced:
            log.info("status_already_announced", model=p.model_name, version=a.version, slot=a.slot, status=a.status)
            return
        self.announced.add(record.event_id)
        self.history.append(record)
        await self.producer.publish(DEPLOYMENTS_STATUS, record)


class Scorer:
    """Stream scoring of features.vectors: one worker-thread call per consumer batch."""

    def __init__(
        self,
        *,
        slots: ModelSlots,
        producer: EventProducer,
        model_name: str | None = None,
        model_of: Callable[[FeatureVectorComputed], str | None] | None = None,
        shadow: bool = True,
    ) -> None:
        """``model_of`` names the model that scores a vector (its project's); or every vector is
        scored by ``model_name``."""
        if model_of is None:
            if model_name is None:
                raise ValueError("give model_of or model_name")
            model_of = lambda _vector: model_name  # noqa: E731
        self.slots = slots
        self.producer = producer
        self.model_of = model_of
        self.shadow = shadow

    async def score_batch(self, events: Sequence[Event[FeatureVectorComputed]]) -> None:
        """Batch handler of the consumer (see :meth:`score`)."""
        await self.score([e.record for e in events])

    async def score_one(self, vector: FeatureVectorComputed) -> None:
        """Per-record handler (used to isolate a bad record): invalid vectors go to the DLQ."""
        try:
            await self.score([vector])
        except ValueError as exc:
            raise PoisonRecord(f"feature vector cannot be scored: {exc}", "validation_error") from exc

    async def score(self, vectors: Sequence[FeatureVectorComputed]) -> None:
        """Score each vector with its project's model: its champion, or its canary for the
        entities the canary serves (:class:`driftline_deployment.slots.Split`).

        A row the champion cannot score fails the batch (the runner then isolates it); rows the
        canary cannot score are served by the champion (counted and logged), never failed. A
        shadow challenger is scored after the served predictions are sent, and nothing it does (an
        error in its input conversion or its predict) reaches them: it is counted
        (``driftline_deployment_shadow_errors_total``), logged, and its batch is skipped. A vector
        of no known project (deleted, or not applied here yet) is not scored."""
        by_model: dict[str, list[FeatureVectorComputed]] = {}
        unknown = 0
        for v in vectors:
            if not v.features:
                raise ValueError(f"the vector of event {v.source_event_id} has no features")
            name = self.model_of(v)
            if name is None:
                unknown += 1
            else:
                by_model.setdefault(name, []).append(v)
        if unknown:
            UNSCORED.inc(unknown)
            log.debug("vectors_of_no_project_unscored", count=unknown)
        # Every champion's input first (a row one cannot score fails the batch before anything is
        # sent), then one worker-thread call that scores every model's rows: with many projects a
        # batch spans many models, and a thread hop per model would cost more than its predict.
        plans: list[tuple[list[FeatureVectorComputed], Split, LoadedModel | None]] = []
        for name, group in by_model.items():
            champion = self.slots.champion(name)  # each slot's reference once for the batch
            challenger = self.slots.challenger(name)
            if champion is None:
                UNSCORED.inc(len(group))
                log.debug("no_model_loaded_vectors_unscored", model=name, count=len(group))
                continue
            canary = challenger if challenger is not None and challenger.is_canary else None
            picked = canary_rows(canary, [v.entity_id for v in group])
            split = Split.of(champion, [v.features for v in group], canary, picked)
            plans.append((group, split, None if canary is not None else challenger))
        if not plans:
            return
        results = await asyncio.to_thread(lambda: [split.predict() for _, split, _ in plans])
        for (group, _, _), served in zip(plans, results, strict=True):
            await self._send_served(group, served)
        if not self.shadow:
            return
        for group, _, shadow in plans:
            if shadow is not None:  # no shadow scoring beside a canary
                await self._shadow(group, shadow)

    async def _shadow(self, vectors: Sequence[FeatureVectorComputed], challenger: LoadedModel) -> None:
        try:
            shadow_x = to_matrix([v.features for v in vectors], challenger.feature_names)
            result = await asyncio.to_thread(challenger.timed_predict, shadow_x)
            if not len(result[0]) == len(result[1]) == len(vectors):
                raise ValueError(f"{len(result[0])} scores for {len(vectors)} vectors")
        except Exception as exc:
            SHADOW_ERRORS.labels(challenger.model_name, str(challenger.version)).inc()
            log.warning(
                "shadow_scoring_failed",
                model=challenger.model_name,
                version=challenger.version,
                records=len(vectors),
                error=f"{type(exc).__name__}: {exc}"[:500],
            )
            return
        await self._send_served(vectors, [Served(challenger, list(range(len(vectors))), *result)])

    async def _send_served(self, vectors: Sequence[FeatureVectorComputed], served: Sequence[Served]) -> None:
        """The predictions of one model's vectors (by its champion and canary, or its shadow), in their order."""
        for part in served:
            SCORE_SECONDS.labels("stream").observe(part.seconds)
            PREDICTIONS_MADE.labels("stream", part.model.prediction_slot).inc(len(part.rows))
        for v, (part, score, predicted) in zip(vectors, by_row(served), strict=True):
            await self.producer.send(PREDICTIONS, self._prediction(v, part.model, score, predicted, part.latency_ms))

    def _prediction(
        self, v: FeatureVectorComputed, model: LoadedModel, score: float, predicted: str, latency_ms: float
    ) -> PredictionMade:
        return PredictionMade(
            **self.producer.envelope(
                cause=v,
                event_time=v.event_time,
                event_id=derived_event_id(v.source_event_id, model.model_name, model.version, model.prediction_slot),
            ),
            source_event_id=v.source_event_id,
            entity_id=v.entity_id,
            model_name=model.model_name,
            model_version=model.version,
            slot=model.prediction_slot,
            shadow=model.shadow,
            score=score,
            predicted_class=predicted,
            scoring_latency_ms=latency_ms,
            served="stream",
        )
