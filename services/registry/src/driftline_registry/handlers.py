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
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from driftline.catalog import MODELS_PROMOTED, MODELS_REJECTED
from driftline.events import Event, as_utc, derived_event_id, envelope, epoch_ms
from driftline.kafka import is_transient, retry_transient
from driftline.logging import get_logger
from driftline.outbox import Outbox, stage
from driftline.project import PromotionPolicy
from driftline_registry.policy import Decision, decide, rollback_target
from driftline_registry.store import Conn, RegistryStore

log = get_logger(__name__)

SERVICE = "registry"
POLICY_ACTOR = "policy"
COMPARISON_FIELDS = ("metric", "candidate_value", "champion_value", "margin", "floor")


class NotFound(Exception):
    """No such model or version."""


class Conflict(Exception):
    """The action makes no sense in the current state (e.g. promoting the champion)."""


def promotion_event_id(model_name: str, version: int) -> str:
    return derived_event_id("promotion", model_name, version)


def rejection_event_id(model_name: str, version: int) -> str:
    return derived_event_id("rejection", model_name, version)


@dataclass(frozen=True)
class ActionResult:
    record: dict[str, Any]
    published: bool


def promoted_record(
    version: dict[str, Any],
    *,
    envelope_fields: dict[str, Any],
    action: str,
    previous_version: int | None,
    reason: str,
    actor: str,
    decision: Decision | None = None,
) -> dict[str, Any]:
    """A ModelPromoted record; a policy promotion carries its comparison (``decision``)."""
    comparison: dict[str, Any] = decision.comparison() if decision else {}
    return {
        **envelope_fields,
        "model_name": version["model_name"],
        "version": version["version"],
        "run_id": version["run_id"],
        "artifact_bucket": version["artifact_bucket"],
        "artifact_key": version["artifact_key"],
        "artifact_sha256": version["artifact_sha256"],
        "metadata_key": version["metadata_key"],
        "metadata_sha256": version["metadata_sha256"],
        "feature_names": list(version["feature_names"]),
        "previous_version": previous_version,
        "action": action,
        "reason": reason,
        "actor": actor,
        "metrics": dict(version["metrics"]),
        "drift_episode_id": version.get("drift_episode_id"),
        **{k: comparison.get(k) for k in COMPARISON_FIELDS},
    }


def rejected_record(version: dict[str, Any], *, envelope_fields: dict[str, Any], decision: Decision) -> dict[str, Any]:
    """A ModelRejected record; ``candidate_value`` is null when the candidate lacks the metric."""
    return {
        **envelope_fields,
        "model_name": version["model_name"],
        "version": version["version"],
        "run_id": version["run_id"],
        "reason": decision.reason,
        **decision.comparison(),
    }


def _wire_time(value: datetime) -> datetime:
    """A new record's time as its event will carry it (milliseconds), so that a history row
    rebuilt from the topic is the row written when the decision was made."""
    return as_utc(epoch_ms(value))


@dataclass
class RegistryHandlers:
    store: RegistryStore
    outbox: Outbox
    policy: PromotionPolicy
    producer_name: str = SERVICE
    publish_timeout_s: float = 15.0

    # -- models.trained -------------------------------------------------------------------------

    async def on_trained(self, event: Event) -> None:
        v = event.value
        name, run_id = v["model_name"], v["run_id"]
        pending: list[str] = []
        async with self.store.locked_model(name, create=True) as (conn, model):
            existing = await self.store.version_by_run(conn, run_id)
            if existing is not None:
                version = existing["version"]
                pending = [promotion_event_id(name, version), rejection_event_id(name, version)]
                log.info("model_already_registered", run_id=run_id, version=version)
            else:
                version = await self.store.logged_version(conn, name, run_id)
                if version is None or await self.store.version(conn, name, version) is not None:
                    version = await self.store.next_version(conn, name, run_id)
                row = await self._register(conn, event, version)
                policy_ids = [promotion_event_id(name, version), rejection_event_id(name, version)]
                if await self.store.logged(conn, policy_ids):
                    # Its decision is on the log already (a rebuild): take it, announce nothing.
                    log.info("model_registered_from_log", run_id=run_id, version=version)
                else:
                    decision = decide(
                        self.policy,
                        metrics=v["metrics"],
                        champion_version=model["champion_version"],
                        evaluated_against=v.get("champion_version"),
                        champion_metrics=v.get("champion_metrics"),
                        comparison_metrics=v.get("comparison_metrics"),
                    )
                    record, topic = self._policy_record(event, row, decision, model["champion_version"])
                    await stage(conn, topic, record)
                    await self._transition(conn, record, topic)
                    pending = [record["event_id"]]
                    log.info(
                        "model_registered",
                        run_id=run_id,
                        version=version,
                        promoted=decision.promote,
                        reason=decision.reason,
                    )
                await self._apply_log(conn, name)
        await self.outbox.publish(pending)

    async def _register(self, conn: Conn, event: Event, version: int) -> dict[str, Any]:
        v = event.value
        name = v["model_name"]
        row = {
            "model_name": name,
            "version": version,
            "run_id": v["run_id"],
            "stage": "candidate",
            "trained_event_id": event.event_id,
            "correlation_id": event.correlation_id,
            "artifact_bucket": v["artifact_bucket"],
            "artifact_key": v["artifact_key"],
            "artifact_sha256": v["artifact_sha256"],
            "metadata_key": v["metadata_key"],
            "metadata_sha256": v["metadata_sha256"],
            "metrics": dict(v["metrics"]),
            "champion_metrics": v.get("champion_metrics"),
            "comparison_metrics": v.get("comparison_metrics"),
            "n_comparison": v.get("n_comparison"),
            "evaluated_against": v.get("champion_version"),
            "dataset_fingerprint": v["dataset_fingerprint"],
            "holdout_fingerprint": v["holdout_fingerprint"],
            "feature_set_version": v["feature_set_version"],
            "feature_names": list(v["feature_names"]),
            "params": dict(v["params"]),
            "n_train": v["n_train"],
            "n_holdout": v["n_holdout"],
            "duration_s": v["duration_s"],
            "trigger": v["trigger"],
            "drift_episode_id": v.get("drift_episode_id"),
            "training_request_id": v.get("training_request_id"),
            "trained_at": as_utc(v["event_time"]),
        }
        await self.store.insert_version(conn, row)
        await self.store.add_history(
            conn,
            event_id=event.event_id,
            model_name=name,
            version=version,
            action="registered",
            actor=v["producer"],
            reason=f"run {v['run_id']} ({v['trigger']})",
            details={"run_id": v["run_id"], "metrics": v["metrics"], "drift_episode_id": v.get("drift_episode_id")},
            correlation_id=event.correlation_id,
            at=as_utc(v["event_time"]),
        )
        return row

    def _policy_record(
        self, event: Event, row: dict[str, Any], decision: Decision, champion: int | None
    ) -> tuple[dict[str, Any], str]:
        name, version = row["model_name"], row["version"]
        if decision.promote:
            record = promoted_record(
                row,
                envelope_fields=envelope(self.producer_name, cause=event, event_id=promotion_event_id(name, version)),
                action="promote",
                previous_version=champion,
                reason=decision.reason,
                actor=POLICY_ACTOR,
                decision=decision,
            )
            return record, MODELS_PROMOTED
        envelope_fields = envelope(self.producer_name, cause=event, event_id=rejection_event_id(name, version))
        return rejected_record(row, envelope_fields=envelope_fields, decision=decision), MODELS_REJECTED

    # -- state changes (new decisions and decisions read back from the log) ---------------------

    async def _transition(self, conn: Conn, record: dict[str, Any], topic: str, *, at: datetime | None = None) -> bool:
        """Apply a decision record (once: False when its history row exists) with its history row.

        ``at``: the decision's time as read from its topic; None for a decision made now.
        """
        name, version = record["model_name"], int(record["version"])
        model = await self.store.model_row(conn, name)
        if topic == MODELS_REJECTED:
            action, previous, actor = "reject", model["champion_version"], POLICY_ACTOR
        else:
            action, previous, actor = record["action"], record.get("previous_version"), record["actor"]
        details = {k: record.get(k) for k in COMPARISON_FIELDS} if record.get("metric") is not None else {}
        new = await self.store.add_history(
            conn,
            event_id=str(record["event_id"]),
            model_name=name,
            version=version,
            action=action,
            actor=actor,
            reason=record["reason"],
            previous_version=previous,
            details=details,
            correlation_id=record["correlation_id"],
            at=at or _wire_time(record["event_time"]),
        )
        if not new:
            return False
        if action == "reject":
            await self.store.set_stage(conn, name, version, "rejected")
        elif action == "shadow":
            await self.store.set_roles(conn, name, champion=model["champion_version"], challenger=version)
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
            if entry["version"] not in registered:
                break
            await self._transition(conn, entry["record"], entry["topic"], at=entry["event_time"])
            await self.store.mark_applied(conn, entry["event_id"])
            applied += 1
        if applied:
            log.info("logged_decisions_applied", model_name=name, applied=applied, waiting=len(pending) - applied)
        return applied

    # -- models.promoted / models.rejected (read back) ---------------------------------------------

    async def on_decision(self, event: Event) -> None:
        """A decision on the registry's own topics: remember it, apply it if it is new here."""
        v = event.value
        name = v["model_name"]
        action = "reject" if event.topic == MODELS_REJECTED else v["action"]
        async with self.store.locked_model(name, create=True) as (conn, _):
            new = await self.store.log_decision(conn, event, action=action)
            await self.store.mark_published(conn, event.event_id)
            if new:
                await self._apply_log(conn, name)

    async def on_decisions_replayed(self, events: Sequence[Event]) -> None:
        """The decision topics from the beginning (at start-up, before anything else is consumed)."""
        for event in events:
            try:
                await retry_transient(lambda event=event: self.on_decision(event), what="decision log")
            except Exception as exc:
                if is_transient(exc):
                    raise
                log.error("decision_not_restored", event_id=event.event_id, error=repr(exc)[:500])
        log.info("decision_log_replayed", records=len(events))

    # -- deployments.status ------------------------------------------------------------------

    async def on_deployment_status(self, event: Event) -> None:
        """Lineage: what each deployment instance did with a promotion."""
        v = event.value
        async with self.store.pool.acquire() as conn:
            await self.store.add_history(
                conn,
                event_id=event.event_id,
                model_name=v["model_name"],
                version=v["version"],
                action="deployment",
                actor=f"deployment:{v['instance_id']}",
                reason=f"{v['slot']} {v['status']}: {v['reason']}",
                details={
                    "status": v["status"],
                    "slot": v["slot"],
                    "instance_id": v["instance_id"],
                    "load_seconds": v.get("load_seconds"),
                    "causation_id": v.get("causation_id"),
                },
                correlation_id=event.correlation_id,
                at=as_utc(v["event_time"]),
            )

    # -- manual actions (HTTP API) ------------------------------------------------------------

    async def promote(self, name: str, version: int, *, actor: str, reason: str | None) -> ActionResult:
        """Make ``version`` the champion (an operator's decision; the policy is not consulted)."""
        async with self.store.locked_model(name, create=False) as (conn, model):
            target = await self._target(conn, model, name, version)
            previous = model["champion_version"]
            if previous == version:
                raise Conflict(f"{name} v{version} is already the champion")
            record = promoted_record(
                target,
                envelope_fields=envelope(self.producer_name),
                action="promote",
                previous_version=previous,
                reason=reason or f"promoted by {actor}",
                actor=actor,
            )
            await self._announce(conn, record)
        return await self._publish(record)

    async def shadow(self, name: str, version: int, *, actor: str, reason: str | None) -> ActionResult:
        """Deploy ``version`` as the challenger (scored in shadow, never served)."""
        async with self.store.locked_model(name, create=False) as (conn, model):
            target = await self._target(conn, model, name, version)
            if model["champion_version"] == version:
                raise Conflict(f"{name} v{version} is the champion; a challenger must be another version")
            if model["challenger_version"] == version:
                raise Conflict(f"{name} v{version} is already the challenger")
            record = promoted_record(
                target,
                envelope_fields=envelope(self.producer_name),
                action="shadow",
                previous_version=model["challenger_version"],
                reason=reason or f"shadow deployment asked by {actor}",
                actor=actor,
            )
            await self._announce(conn, record)
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
            record = promoted_record(
                target,
                envelope_fields=envelope(self.producer_name),
                action="rollback",
                previous_version=current,
                reason=reason or f"rolled back from v{current} by {actor}",
                actor=actor,
            )
            await self._announce(conn, record)
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

    async def _target(self, conn: Conn, model: Any, name: str, version: int) -> dict[str, Any]:
        if model is None:
            raise NotFound(f"no model {name!r}")
        target = await self.store.version(conn, name, version)
        if target is None:
            raise NotFound(f"{name} has no version {version}")
        return target

    async def _announce(self, conn: Conn, record: dict[str, Any]) -> None:
        await self._transition(conn, record, MODELS_PROMOTED)
        await stage(conn, MODELS_PROMOTED, record)

    async def _publish(self, record: dict[str, Any]) -> ActionResult:
        """Publish now; if Kafka is down the outbox relay publishes it later."""
        try:
            await asyncio.wait_for(self.outbox.publish([record["event_id"]]), timeout=self.publish_timeout_s)
            return ActionResult(record, True)
        except Exception as exc:
            log.warning("publish_deferred_to_outbox", event_id=record["event_id"], error=repr(exc)[:300])
            return ActionResult(record, False)
