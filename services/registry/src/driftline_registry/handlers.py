"""What the registry does: register trained models, apply the promotion policy, and carry out the
manual promote / shadow / rollback actions. Every change of champion or challenger is stored with
its history row and the event that announces it in one transaction (outbox), then published.

The log is the registry's memory. Besides ``models.trained`` it reads its own decision topics
(``models.promoted``, ``models.rejected``) back, from the beginning at every start and before it
consumes anything else (:meth:`RegistryHandlers.on_decision`). So:

* a registry rebuilt from the log (empty schema, new consumer group) restores every decision,
  manual ones (promote, shadow, rollback, with actor and reason) included, in the order they
  were made: a decision waits until its version is registered from ``models.trained``;
* a version whose policy decision is already on the log (its event id derives from the model and
  version) takes that decision instead of deciding again, and nothing is re-announced;
* replaying ``models.trained`` is idempotent: a run that already has a version finds it and emits
  nothing new, unless the announcement never went out (a crash between commit and publish), in
  which case it goes out now.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from functools import partial
from typing import Any

from driftline.canary import check_fraction
from driftline.catalog import MODELS_PROMOTED, MODELS_REJECTED
from driftline.events import Envelope, Event, as_utc, derived_event_id, envelope, epoch_ms
from driftline.logging import get_logger
from driftline.outbox import Outbox, stage
from driftline.project import PromotionPolicy
from driftline.records import ChallengerCompared, DeploymentStatusChanged, ModelPromoted, ModelRejected, ModelTrained
from driftline.retry import is_transient, retry_transient
from driftline_registry.policy import Comparison, Decision, decide, rollback_target
from driftline_registry.store import Conn, Decided, RegisteredVersion, RegistryStore

log = get_logger(__name__)

POLICY_ACTOR = "policy"
SHADOW_POLICY_ACTOR = "policy:shadow"  # a promotion on monitoring's shadow verdict
CANARY_POLICY_ACTOR = "policy:canary"  # a canary promoted or withdrawn on monitoring's canary verdict
COMPARISON_FIELDS = tuple(Comparison.__annotations__)


class NotFound(Exception):
    """No such model or version."""


class Conflict(Exception):
    """The action makes no sense in the current state (e.g. promoting the champion)."""


def promotion_event_id(model_name: str, version: int) -> str:
    event_id: str = derived_event_id("promotion", model_name, version)
    return event_id


def rejection_event_id(model_name: str, version: int) -> str:
    event_id: str = derived_event_id("rejection", model_name, version)
    return event_id


@dataclass(frozen=True)
class ActionResult:
    record: ModelPromoted
    published: bool


def promotion(
    of: ModelTrained | RegisteredVersion,
    *,
    version: int,
    env: Envelope,
    action: str,
    previous_version: int | None,
    reason: str,
    actor: str,
    decision: Decision | None = None,
    traffic_fraction: float | None = None,
) -> ModelPromoted:
    """The ModelPromoted record of a version (a run just registered, or a registered version); a
    policy promotion carries its comparison (``decision``), a canary its ``traffic_fraction``."""
    record = ModelPromoted(
        **env,
        model_name=of.model_name,
        version=version,
        run_id=of.run_id,
        artifact_bucket=of.artifact_bucket,
        artifact_key=of.artifact_key,
        artifact_sha256=of.artifact_sha256,
        metadata_key=of.metadata_key,
        metadata_sha256=of.metadata_sha256,
        feature_names=tuple(of.feature_names),
        previous_version=previous_version,
        action=action,
        reason=reason,
        actor=actor,
        metrics=dict(of.metrics),
        drift_episode_id=of.drift_episode_id,
        traffic_fraction=traffic_fraction,
    )
    return record if decision is None else replace(record, **decision.comparison())


def rejection(of: ModelTrained, *, version: int, env: Envelope, decision: Decision) -> ModelRejected:
    """The ModelRejected record of a run; ``candidate_value`` is null when the candidate lacks the metric."""
    return ModelRejected(
        **env,
        model_name=of.model_name,
        version=version,
        run_id=of.run_id,
        reason=decision.reason,
        **decision.comparison(),
    )


def action_and_actor(record: Decided) -> tuple[str, str]:
    """What a decision does to its version, and who decided it."""
    if isinstance(record, ModelRejected):
        return "reject", POLICY_ACTOR
    return record.action, record.actor


def topic_of(record: Decided) -> str:
    topic: str = MODELS_REJECTED if isinstance(record, ModelRejected) else MODELS_PROMOTED
    return topic


def verdict_reason(c: ChallengerCompared) -> str:
    """The evidence of a verdict, as the reason of what the registry does on it."""
    interval = f"{c.confidence:.0%} interval [{c.interval_low:+.4f}, {c.interval_high:+.4f}]"
    if c.mode == "canary":
        return (
            f"canary verdict {c.verdict}: canary v{c.challenger_version} accuracy {c.challenger_accuracy:.4f} on "
            f"{c.challenger_labelled} labelled events of its {c.traffic_fraction or 0:g} of the entities vs champion "
            f"v{c.champion_version} {c.champion_accuracy:.4f} on {c.champion_labelled}, "
            f"difference {c.difference:+.4f}, {interval}, one-sided p={c.p_value:.3g}"
        )
    return (
        f"shadow verdict: challenger v{c.challenger_version} accuracy {c.challenger_accuracy:.4f} vs champion "
        f"v{c.champion_version} {c.champion_accuracy:.4f} on {c.labelled_pairs} labelled events, difference "
        f"{c.difference:+.4f}, {interval}, McNemar p={c.p_value:.3g}"
    )


def _wire_time(value: datetime) -> datetime:
    """A new record's time as its event will carry it (milliseconds), so that a history row
    rebuilt from the topic is the row written when the decision was made."""
    at: datetime = as_utc(epoch_ms(value))
    return at


@dataclass
class RegistryHandlers:
    store: RegistryStore
    outbox: Outbox
    policy: PromotionPolicy  # of a model that ``policies`` does not know
    producer_name: str = "registry"
    publish_timeout_s: float = 15.0
    # The promotion policy of a model's project, as the projects topic has it now (None: unknown).
    policies: Callable[[str], PromotionPolicy | None] = lambda _name: None

    def policy_of(self, model_name: str) -> PromotionPolicy:
        return self.policies(model_name) or self.policy

    # -- models.trained -------------------------------------------------------------------------

    async def on_model_trained(self, e: ModelTrained) -> None:
        name, run_id = e.model_name, e.run_id
        pending: list[str] = []
        async with self.store.locked_model(name, create=True) as (conn, model):
            existing = await self.store.version_of_run(conn, run_id)
            if existing is not None:
                pending = [promotion_event_id(name, existing), rejection_event_id(name, existing)]
                log.info("model_already_registered", run_id=run_id, version=existing)
            else:
                version = await self.store.logged_version(conn, name, run_id)
                if version is None or await self.store.version(conn, name, version) is not None:
                    version = await self.store.next_version(conn, name, run_id)
                await self._register(conn, e, version)
                if await self.store.logged(
                    conn, [promotion_event_id(name, version), rejection_event_id(name, version)]
                ):
                    # Its decision is on the log already (a rebuild): take it, announce nothing.
                    log.info("model_registered_from_log", run_id=run_id, version=version)
                else:
                    decision = decide(
                        self.policy_of(name),
                        metrics=e.metrics,
                        champion_version=model["champion_version"],
                        evaluated_against=e.champion_version,
                        champion_metrics=e.champion_metrics,
                        comparison_metrics=e.comparison_metrics,
                        n_compared=e.n_comparison,
                        wins=e.comparison_wins,
                        losses=e.comparison_losses,
                        refresh=e.refresh,
                    )
                    record = self._policy_record(e, version, decision, model["champion_version"])
                    await self._announce(conn, record)
                    pending = [record.event_id]
                    log.info(
                        "model_registered",
                        run_id=run_id,
                        version=version,
                        promoted=decision.promote,
                        reason=decision.reason,
                    )
                await self._apply_log(conn, name)
        await self.outbox.publish(pending)

    async def _register(self, conn: Conn, e: ModelTrained, version: int) -> None:
        await self.store.insert_version(conn, e, version)
        await self.store.add_history(
            conn,
            event_id=e.event_id,
            model_name=e.model_name,
            version=version,
            action="registered",
            actor=e.producer,
            reason=f"run {e.run_id} ({e.trigger})",
            details={"run_id": e.run_id, "metrics": e.metrics, "drift_episode_id": e.drift_episode_id},
            correlation_id=e.correlation_id,
            at=as_utc(e.event_time),
        )

    def _policy_record(self, e: ModelTrained, version: int, decision: Decision, champion: int | None) -> Decided:
        name = e.model_name
        if decision.promote:
            return promotion(
                e,
                version=version,
                env=envelope(self.producer_name, cause=e, event_id=promotion_event_id(name, version)),
                action="promote",
                previous_version=champion,
                reason=decision.reason,
                actor=POLICY_ACTOR,
                decision=decision,
            )
        env = envelope(self.producer_name, cause=e, event_id=rejection_event_id(name, version))
        return rejection(e, version=version, env=env, decision=decision)

    # -- state changes (new decisions and decisions read back from the log) ---------------------

    async def _transition(self, conn: Conn, record: Decided, *, at: datetime | None = None) -> bool:
        """Apply a decision record (once: False when its history row exists) with its history row.

        ``at``: the decision's time as read from its topic; None for a decision made now.
        """
        name, version = record.model_name, record.version
        model = await self.store.model_row(conn, name)
        action, actor = action_and_actor(record)
        previous = model["champion_version"] if isinstance(record, ModelRejected) else record.previous_version
        details = {k: getattr(record, k) for k in COMPARISON_FIELDS} if record.metric is not None else {}
        if isinstance(record, ModelPromoted) and record.traffic_fraction is not None:
            details["traffic_fraction"] = record.traffic_fraction
        new = await self.store.add_history(
            conn,
            event_id=record.event_id,
            model_name=name,
            version=version,
            action=action,
            actor=actor,
            reason=record.reason,
            previous_version=previous,
            details=details,
            correlation_id=record.correlation_id,
            at=at or _wire_time(record.event_time),
        )
        if not new:
            return False
        if action == "reject":
            await self.store.set_stage(conn, name, version, "rejected")
        elif action == "shadow":
            await self.store.set_roles(conn, name, champion=model["champion_version"], challenger=version)
        elif action == "canary":
            fraction = record.traffic_fraction if isinstance(record, ModelPromoted) else None
            await self.store.set_roles(
                conn, name, champion=model["champion_version"], challenger=version, canary_fraction=fraction or 1.0
            )
        elif action == "canary_rollback":
            await self.store.set_stage(conn, name, version, "rolled_back")
            if model["challenger_version"] == version:
                await self.store.set_roles(conn, name, champion=model["champion_version"], challenger=None)
        else:
            await self._crown(conn, model, version, retire_as="rolled_back" if action == "rollback" else "archived")
        return True

    async def _apply_log(self, conn: Conn, name: str) -> int:
        """Apply logged decisions not applied here yet, in the order they were made, up to the
        first one whose version is not registered yet (it waits for models.trained)."""
        pending = await self.store.pending_decisions(conn, name)
        if not pending:
            return 0
        registered = await self.store.registered_versions(conn, name)
        applied = 0
        for entry in pending:
            if entry.version not in registered:
                break
            await self._transition(conn, entry.record, at=entry.event_time)
            await self.store.mark_applied(conn, entry.event_id)
            applied += 1
        if applied:
            log.info("logged_decisions_applied", model_name=name, applied=applied, waiting=len(pending) - applied)
        return applied

    # -- models.promoted / models.rejected (read back) ---------------------------------------------

    async def on_decision(self, event: Event[Decided]) -> None:
        """A decision on the registry's own topics: remember it, apply it if it is new here.

        It takes the event, not the record alone: the log keeps the decision's place on its topic."""
        record = event.record
        action, actor = action_and_actor(record)
        async with self.store.locked_model(record.model_name, create=True) as (conn, _):
            new = await self.store.log_decision(conn, event, action=action, actor=actor)
            await self.store.mark_published(conn, record.event_id)
            if new:
                await self._apply_log(conn, record.model_name)

    async def on_decisions_replayed(self, events: Sequence[Event[Decided]]) -> None:
        """The decision topics from the beginning (at start-up, before anything else is consumed)."""
        for event in events:
            try:
                await retry_transient(partial(self.on_decision, event), what="decision log")
            except Exception as exc:
                if is_transient(exc):
                    raise
                log.error("decision_not_restored", event_id=event.event_id, error=repr(exc)[:500])
        log.info("decision_log_replayed", records=len(events))

    # -- deployments.status ------------------------------------------------------------------

    async def on_deployment_status(self, e: DeploymentStatusChanged) -> None:
        """Lineage: what each deployment instance did with a promotion."""
        async with self.store.pool.acquire() as conn:
            await self.store.add_history(
                conn,
                event_id=e.event_id,
                model_name=e.model_name,
                version=e.version,
                action="deployment",
                actor=f"deployment:{e.instance_id}",
                reason=f"{e.slot} {e.status}: {e.reason}",
                details={
                    "status": e.status,
                    "slot": e.slot,
                    "instance_id": e.instance_id,
                    "load_seconds": e.load_seconds,
                    "causation_id": e.causation_id,
                },
                correlation_id=e.correlation_id,
                at=as_utc(e.event_time),
            )

    # -- models.compared (monitoring's shadow verdicts) ---------------------------------------

    async def on_challenger_compared(self, c: ChallengerCompared) -> None:
        """Monitoring's verdict on the challenger, applied if the challenger is still that
        champion's here (a replayed or late verdict changes nothing); the new record's cause is
        the verdict, its reason the evidence.

        * In shadow (the same labelled events, with the significance of the project's
          ``shadow_min_pairs`` and ``shadow_confidence``): ``challenger_better`` promotes it.
        * For a canary (the labelled events of each side of the traffic split, judged with
          ``canary_min_labels``, ``canary_max_labels`` and ``canary_confidence``):
          ``challenger_better`` promotes it; ``champion_better``, or ``no_difference`` once the
          canary's side reached ``canary_max_labels``, withdraws it (``canary_rollback``).
        """
        canary = c.mode == "canary"
        if c.verdict not in (
            ("challenger_better", "champion_better", "no_difference") if canary else ("challenger_better",)
        ):
            return
        async with self.store.locked_model(c.model_name, create=False) as (conn, model):
            roles = None if model is None else (model["champion_version"], model["challenger_version"])
            is_canary = model is not None and model["canary_fraction"] is not None
            if roles != (c.champion_version, c.challenger_version) or is_canary != canary:
                log.info(
                    "verdict_not_current",
                    model_name=c.model_name,
                    mode=c.mode,
                    verdict_for=[c.champion_version, c.challenger_version],
                    now=roles,
                )
                return
            target = await self.store.registered(conn, c.model_name, c.challenger_version)
            if target is None:
                return
            promote = c.verdict == "challenger_better"
            record = promotion(
                target,
                version=c.challenger_version,
                env=envelope(self.producer_name, cause=c),
                action="promote" if promote else "canary_rollback",
                previous_version=c.champion_version,
                reason=verdict_reason(c),
                actor=CANARY_POLICY_ACTOR if canary else SHADOW_POLICY_ACTOR,
            )
            await self._announce(conn, record)
        log.info(
            "acted_on_verdict", model_name=c.model_name, mode=c.mode, verdict=c.verdict, action=record.action,
            version=c.challenger_version,
        )  # fmt: skip
        await self._publish(record)

    # -- manual actions (HTTP API) ------------------------------------------------------------

    async def promote(self, name: str, version: int, *, actor: str, reason: str | None) -> ActionResult:
        """Make ``version`` the champion (an operator's decision; the policy is not consulted)."""
        async with self.store.locked_model(name, create=False) as (conn, model):
            target = await self._target(conn, model, name, version)
            previous = model["champion_version"]
            if previous == version:
                raise Conflict(f"{name} v{version} is already the champion")
            record = await self._announce_manual(
                conn, target, "promote", previous_version=previous, reason=reason or f"promoted by {actor}", actor=actor
            )
        return await self._publish(record)

    async def shadow(self, name: str, version: int, *, actor: str, reason: str | None) -> ActionResult:
        """Deploy ``version`` as the challenger (scored in shadow, never served)."""
        async with self.store.locked_model(name, create=False) as (conn, model):
            target = await self._target(conn, model, name, version)
            if model["champion_version"] == version:
                raise Conflict(f"{name} v{version} is the champion; a challenger must be another version")
            if model["challenger_version"] == version:
                raise Conflict(f"{name} v{version} is already the challenger")
            record = await self._announce_manual(
                conn,
                target,
                "shadow",
                previous_version=model["challenger_version"],
                reason=reason or f"shadow deployment asked by {actor}",
                actor=actor,
            )
        return await self._publish(record)

    async def canary(self, name: str, version: int, *, fraction: float, actor: str, reason: str | None) -> ActionResult:
        """Deploy ``version`` as a canary serving ``fraction`` of the entities (split by entity id);
        monitoring compares it with the champion on the labels of each side and the policy promotes
        or withdraws it. Asking again with another fraction changes the share (a new comparison)."""
        fraction = check_fraction(fraction)
        async with self.store.locked_model(name, create=False) as (conn, model):
            target = await self._target(conn, model, name, version)
            champion = model["champion_version"]
            if champion is None:
                raise Conflict(f"{name} has no champion for a canary to share the traffic with: promote v{version}")
            if champion == version:
                raise Conflict(f"{name} v{version} is the champion; a canary must be another version")
            if model["challenger_version"] == version and model["canary_fraction"] == fraction:
                raise Conflict(f"{name} v{version} is already the canary at {fraction:g}")
            record = await self._announce_manual(
                conn,
                target,
                "canary",
                previous_version=model["challenger_version"],
                reason=reason or f"canary at {fraction:g} of the traffic asked by {actor}",
                actor=actor,
                traffic_fraction=fraction,
            )
        return await self._publish(record)

    async def end_canary(self, name: str, *, actor: str, reason: str | None) -> ActionResult:
        """Withdraw the canary (``canary_rollback``): the champion serves every entity again."""
        async with self.store.locked_model(name, create=False) as (conn, model):
            if model is None:
                raise NotFound(f"no model {name!r}")
            version = model["challenger_version"]
            if version is None or model["canary_fraction"] is None:
                raise Conflict(f"{name} has no canary")
            target = await self._target(conn, model, name, version)
            record = await self._announce_manual(
                conn,
                target,
                "canary_rollback",
                previous_version=model["champion_version"],
                reason=reason or f"canary v{version} withdrawn by {actor}",
                actor=actor,
            )
        return await self._publish(record)

    async def rollback(
        self, name: str, *, actor: str, reason: str | None, to_version: int | None = None
    ) -> ActionResult:
        """Bring back the previous champion (or ``to_version``); the current one is marked rolled back."""
        async with self.store.locked_model(name, create=False) as (conn, model):
            if model is None:
                raise NotFound(f"no model {name!r}")
            current = model["champion_version"]
            if current is None:
                raise Conflict(f"{name} has no champion to roll back")
            if to_version is None:
                to_version = rollback_target(
                    await self.store.champion_sequence(conn, name),
                    current,
                    await self.store.versions_in_stage(conn, name, "rolled_back"),
                )
                if to_version is None:
                    raise Conflict(f"{name} has no earlier champion to roll back to (champion is v{current})")
            elif to_version == current:
                raise Conflict(f"{name} v{to_version} is already the champion")
            target = await self._target(conn, model, name, to_version)
            record = await self._announce_manual(
                conn,
                target,
                "rollback",
                previous_version=current,
                reason=reason or f"rolled back from v{current} by {actor}",
                actor=actor,
            )
        return await self._publish(record)

    async def _crown(self, conn: Conn, model: Any, version: int, *, retire_as: str) -> None:
        """Make ``version`` the champion; the previous champion, if any, moves to stage ``retire_as``.

        The challenger slot empties, as deployment's does: a challenger shadowed the champion it
        was meant to beat (a later ``shadow`` fills the slot again).
        """
        name, previous = model["name"], model["champion_version"]
        if previous is not None and previous != version:
            await self.store.set_stage(conn, name, previous, retire_as)
        await self.store.set_stage(conn, name, version, "champion")
        await self.store.set_roles(conn, name, champion=version, challenger=None)

    async def _target(self, conn: Conn, model: Any, name: str, version: int) -> RegisteredVersion:
        if model is None:
            raise NotFound(f"no model {name!r}")
        target = await self.store.registered(conn, name, version)
        if target is None:
            raise NotFound(f"{name} has no version {version}")
        return target

    async def _announce(self, conn: Conn, record: Decided) -> None:
        """Apply a decision made now and store its event in the same transaction (outbox)."""
        await self._transition(conn, record)
        await stage(conn, topic_of(record), record.to_avro())

    async def _announce_manual(
        self,
        conn: Conn,
        target: RegisteredVersion,
        action: str,
        *,
        previous_version: int | None,
        reason: str,
        actor: str,
        traffic_fraction: float | None = None,
    ) -> ModelPromoted:
        """An operator's ``action`` on ``target`` (promote, shadow, canary, canary_rollback,
        rollback), announced now."""
        record = promotion(
            target,
            version=target.version,
            env=envelope(self.producer_name),
            action=action,
            previous_version=previous_version,
            reason=reason,
            actor=actor,
            traffic_fraction=traffic_fraction,
        )
        await self._announce(conn, record)
        return record

    async def _publish(self, record: ModelPromoted) -> ActionResult:
        """Publish now; if Kafka is down the outbox relay publishes it later."""
        try:
            await asyncio.wait_for(self.outbox.publish([record.event_id]), timeout=self.publish_timeout_s)
            return ActionResult(record, True)
        except Exception as exc:
            log.warning("publish_deferred_to_outbox", event_id=record.event_id, error=repr(exc)[:300])
            return ActionResult(record, False)
