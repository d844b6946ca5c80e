"""Automatic triggers: a drift episode or the first model asks for a run.

Each step reads the state a decision needs in one transaction (under the model's trigger lock),
lets :mod:`driftline_training.trigger_policy` decide, and stores the decision with the request it
makes (outbox); the request is published once the transaction committed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime

from driftline.catalog import TRAINING_REQUESTED
from driftline.events import as_utc, now_utc
from driftline.logging import get_logger
from driftline.outbox import Outbox
from driftline.project import CooldownSpec, Project
from driftline.records import DriftDetected, TrainingRequested
from driftline_training import trigger_policy
from driftline_training.requests import (
    REFRESH,
    drift_request_id,
    initial_request_id,
    request_event_id_of,
    request_record,
)
from driftline_training.store import CountedGap, TrainingStore, TrainingTransaction
from driftline_training.trigger_policy import Ask, Trigger, TriggerDecision, TriggerState

log = get_logger(__name__)

DRIFT_POLICY = "training:drift-policy"
INITIAL_POLICY = "training:initial-policy"


@dataclass
class Triggers:
    project: Project
    store: TrainingStore
    outbox: Outbox
    producer_name: str
    feature_set_version: str = ""  # the vectors' (the projects topic's); default: the file's features.version
    _initial_done: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.feature_set_version = self.feature_set_version or self.project.features.version

    async def drift(self, e: DriftDetected) -> TriggerDecision:
        """At most one request per drift episode, none within the cooldown of another live one.

        Labels lag the events: right after a drift, few of the examples since its onset may be
        labelled yet. Then the trigger waits (holding the cooldown) and the request goes out once
        the policy's minimum exists (:meth:`retry_waiting`), rather than a run that can only fail
        for want of examples.
        """
        model, episode = e.model_name, e.episode_id
        # Train on what came after the change: its estimated onset when monitoring gives one
        # (performance drift), else the start of the window that drifted. A refresh has none: it
        # trains on the whole recent selection (requests.is_refresh).
        onset = None if e.reason == REFRESH else as_utc(e.onset or e.window_start)
        ask = Ask(
            trigger_id=trigger_policy.drift_trigger_id(model, episode, e.attempt),
            kind="drift",
            model_name=model,
            event_time=as_utc(e.event_time),
            source_event_id=e.event_id,
            episode_id=episode,
            correlation_id=e.correlation_id,
            since=onset,
            episode_attempt=e.attempt,
        )
        request = request_record(
            request_id=drift_request_id(model, episode, episode_attempt=e.attempt),
            model_name=model,
            reason="drift",
            requested_by=DRIFT_POLICY,
            cause=e,
            drift_episode_id=episode,
            since=onset,
            producer=self.producer_name,
        )
        ignore = trigger_policy.ignore_reason(model, self.project.model.name)
        labelled = None if ignore is not None else await self._labelled_since(onset)
        decision = await self._decide(ask, request, ignore=ignore, labelled=labelled)
        log.info(
            "drift_trigger_decided",
            episode_id=episode,
            episode_attempt=e.attempt,
            why=e.reason,
            decision=decision.decision,
            reason=decision.reason,
            request_id=decision.request_id,
            labelled_since_onset=labelled,
            first_delivery=decision.new,
        )
        return decision

    async def request_initial(self) -> None:
        """The policy's ``initial_training_after``: request the first model once enough examples exist."""
        policy = self.project.training
        if policy.initial_training_after <= 0 or self._initial_done:
            return
        model, fsv = self.project.model.name, self.feature_set_version
        trigger_id = trigger_policy.initial_trigger_id(model, fsv)
        if await self.store.trigger_exists(trigger_id) or await self.store.get_champion(model) is not None:
            self._initial_done = True
            return
        labelled = (await self.store.example_counts(fsv, self.project.label.classes, self.project.name))["labelled"]
        if not trigger_policy.initial_due(policy.initial_training_after, labelled):
            return
        request = request_record(
            request_id=initial_request_id(model, fsv),
            model_name=model,
            reason="initial",
            requested_by=INITIAL_POLICY,
            producer=self.producer_name,
        )
        ask = Ask(trigger_id=trigger_id, kind="initial", model_name=model, event_time=now_utc())
        await self._decide(ask, request, cooldown=trigger_policy.NO_COOLDOWN)
        log.info("initial_training_requested", request_id=request.request_id, labelled=labelled)
        self._initial_done = True

    async def retry_waiting(self) -> None:
        """Ask for the drift runs that waited for labelled examples, once they exist.

        The new request stays in the drift event's chain (same cause and correlation).
        """
        waiting = await self.store.waiting_triggers()
        for t in waiting:
            if t.model_name != self.project.model.name:
                continue  # another project's model (each project's triggers ask for their own)
            labelled = await self._labelled_since(t.since)
            if not trigger_policy.enough_labelled(labelled, self.project.training.min_examples):
                continue
            attempt = t.attempts + 1
            request = self._request_for(
                t, drift_request_id(t.model_name, str(t.episode_id), attempt, t.episode_attempt)
            )
            async with self.store.transaction() as tx:
                taken = await tx.take_waiting(t.trigger_id, request.request_id)
                if taken:
                    await tx.stage(TRAINING_REQUESTED, request)
            if taken:
                await self.outbox.publish([request.event_id])
                log.info(
                    "drift_training_requested_again",
                    episode_id=t.episode_id,
                    attempt=attempt,
                    labelled=labelled,
                    request_id=request.request_id,
                )

    async def after_failed_run(self, tx: TrainingTransaction, trigger_id: str, error_type: str) -> None:
        """In the failed run's transaction: its trigger waits for labelled examples again when that
        is what the run lacked."""
        if trigger_policy.waits_again(error_type, await tx.trigger(trigger_id)):
            await tx.set_waiting(trigger_id)

    async def revive_suppressed(self, failed_trigger_id: str) -> None:
        """A failed drift run does not use up the cooldown: request the latest drift it suppressed
        (within the cooldown of the failed one, in its unit), unless another live run lies within its own."""
        cooldown = self.project.training.cooldown_spec
        counted = self._counted(cooldown)
        async with self.store.transaction() as tx:
            failed = await tx.trigger(failed_trigger_id)
            if failed is None or not trigger_policy.frees_its_cooldown(failed):
                return
            await tx.lock_model_triggers(failed.model_name)
            if counted is None:
                suppressed = await tx.latest_suppressed(failed, cooldown.amount)
            else:
                suppressed = await tx.latest_suppressed_counted(failed, counted)
            if suppressed is None:
                return
            nearest, gap = await self._nearest_live(
                tx, suppressed.model_name, failed.kind, suppressed.event_time, counted
            )
            reason = trigger_policy.revival(failed_trigger_id, suppressed, nearest, cooldown, gap)
            if reason is None:
                return
            # The request the drift event would have made had it not been suppressed.
            request = self._request_for(
                suppressed,
                drift_request_id(
                    suppressed.model_name, str(suppressed.episode_id), episode_attempt=suppressed.episode_attempt
                ),
            )
            if not await tx.mark_requested(suppressed.trigger_id, reason, request.request_id):
                return
            await tx.stage(TRAINING_REQUESTED, request)
        await self.outbox.publish([request.event_id])
        log.info(
            "drift_training_requested_after_failure",
            trigger_id=suppressed.trigger_id,
            failed_trigger_id=failed_trigger_id,
            request_id=request.request_id,
        )

    async def _decide(
        self,
        ask: Ask,
        request: TrainingRequested,
        *,
        cooldown: CooldownSpec | None = None,
        ignore: str | None = None,
        labelled: int | None = None,
    ) -> TriggerDecision:
        """Decide once per trigger under the model's lock; stage ``request`` when the decision makes it.

        What the cooldown needs (the nearest live request and, for a count, the examples between it
        and this trigger) is read in the same transaction, under the lock.
        """
        policy = self.project.training
        cooldown = policy.cooldown_spec if cooldown is None else cooldown
        counted = self._counted(cooldown)
        async with self.store.transaction() as tx:
            await tx.lock_model_triggers(ask.model_name)
            earlier = await tx.trigger(ask.trigger_id)
            nearest, gap = await self._nearest_live(tx, ask.model_name, ask.kind, ask.event_time, counted)
            state = TriggerState(earlier=earlier, nearest_live_request=nearest, gap=gap)
            decision = trigger_policy.decide(
                ask,
                state,
                cooldown=cooldown,
                ignore=ignore,
                labelled=labelled,
                min_examples=policy.min_examples,
            )
            if decision.new:
                if decision.requests_now:
                    decision = dataclasses.replace(decision, request_id=request.request_id)
                    await tx.stage(TRAINING_REQUESTED, request)
                await tx.insert_trigger(trigger_policy.decided(ask, decision))
        if decision.request_id:
            await self.outbox.publish([request_event_id_of(decision.request_id)])
        return decision

    def _counted(self, cooldown: CooldownSpec) -> CountedGap | None:
        """What a count cooldown counts: this project's examples (None: a duration)."""
        if cooldown.is_duration:
            return None
        return CountedGap(
            cooldown.unit,
            int(cooldown.amount),
            self.feature_set_version,
            tuple(self.project.label.classes),
            self.project.name,
        )

    @staticmethod
    async def _nearest_live(
        tx: TrainingTransaction, model_name: str, kind: str, event_time: datetime, counted: CountedGap | None
    ) -> tuple[datetime | None, int | None]:
        """The nearest live request's event time and, for a count cooldown, the examples in between."""
        if counted is None:
            return await tx.nearest_live_request(model_name, kind, event_time), None
        nearest = await tx.nearest_live_request_counted(model_name, kind, event_time, counted)
        return nearest if nearest is not None else (None, None)

    async def _labelled_since(self, since: datetime | None) -> int:
        """Labelled examples a drift run would train on: since the onset with selection since_drift."""
        selection_since = since if self.project.training.selection == "since_drift" else None
        return await self.store.count_labelled(
            self.feature_set_version, self.project.label.classes, selection_since, self.project.name
        )

    def _request_for(self, t: Trigger, request_id: str) -> TrainingRequested:
        """A drift request for a stored trigger, in its drift event's chain (same cause and correlation)."""
        return request_record(
            request_id=request_id,
            model_name=t.model_name,
            reason="drift",
            requested_by=DRIFT_POLICY,
            cause={"event_id": t.source_event_id, "correlation_id": t.correlation_id},
            drift_episode_id=t.episode_id,
            since=t.since,
            producer=self.producer_name,
        )
