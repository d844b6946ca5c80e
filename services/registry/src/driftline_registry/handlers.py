"""What the registry does: register trained models, apply the promotion policy, and carry out the
manual promote / shadow / rollback actions. Every change of champion or challenger is stored with
its history row and the event that announces it in one transaction (outbox), then published.

Replaying ``models.trained`` is idempotent: a run that already has a version finds it (and its
decision, whose event id derives from the model and version) and emits nothing new, unless the
announcement never went out (a crash between commit and publish), in which case it goes out now.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from driftline.catalog import MODELS_PROMOTED, MODELS_REJECTED
from driftline.events import Event, as_utc, derived_event_id, envelope
from driftline.logging import get_logger
from driftline.outbox import Outbox, stage
from driftline.project import PromotionPolicy
from driftline_registry.policy import Decision, decide, rollback_target
from driftline_registry.store import Conn, RegistryStore

log = get_logger(__name__)

SERVICE = "registry"
POLICY_ACTOR = "policy"


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
) -> dict[str, Any]:
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
    }


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
        async with self.store.locked_model(name, create=True) as (conn, model):
            existing = await self.store.version_by_run(conn, run_id)
            if existing is not None:
                version = existing["version"]
                pending = [promotion_event_id(name, version), rejection_event_id(name, version)]
                log.info("model_already_registered", run_id=run_id, version=version)
            else:
                version = await self.store.next_version(conn, name)
                decision = decide(
                    self.policy,
                    metrics=v["metrics"],
                    champion_version=model["champion_version"],
                    evaluated_against=v.get("champion_version"),
                    champion_metrics=v.get("champion_metrics"),
                )
                await self._register(conn, event, version, decision, model)
                pending = [promotion_event_id(name, version) if decision.promote else rejection_event_id(name, version)]
                log.info(
                    "model_registered",
                    run_id=run_id,
                    version=version,
                    promoted=decision.promote,
                    reason=decision.reason,
                )
        await self.outbox.publish(pending)

    async def _register(self, conn: Conn, event: Event, version: int, decision: Decision, model: Any) -> None:
        v = event.value
        name = v["model_name"]
        row = {
            "model_name": name,
            "version": version,
            "run_id": v["run_id"],
            "stage": "champion" if decision.promote else "rejected",
            "trained_event_id": event.event_id,
            "correlation_id": event.correlation_id,
            "artifact_bucket": v["artifact_bucket"],
            "artifact_key": v["artifact_key"],
            "artifact_sha256": v["artifact_sha256"],
            "metadata_key": v["metadata_key"],
            "metadata_sha256": v["metadata_sha256"],
            "metrics": dict(v["metrics"]),
            "champion_metrics": v.get("champion_metrics"),
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
        )
        previous = model["champion_version"]
        if decision.promote:
            record = promoted_record(
                row,
                envelope_fields=envelope(self.producer_name, cause=event, event_id=promotion_event_id(name, version)),
                action="promote",
                previous_version=previous,
                reason=decision.reason,
                actor=POLICY_ACTOR,
            )
            await self._crown(conn, model, version, retire_as="archived")
            topic, action = MODELS_PROMOTED, "promote"
        else:
            record = {
                **envelope(self.producer_name, cause=event, event_id=rejection_event_id(name, version)),
                "model_name": name,
                "version": version,
                "run_id": v["run_id"],
                "reason": decision.reason,
                "metric": decision.metric,
                "candidate_value": decision.candidate_value if decision.candidate_value is not None else 0.0,
                "champion_value": decision.champion_value,
                "margin": decision.margin,
                "floor": decision.floor,
            }
            topic, action = MODELS_REJECTED, "reject"
        await self.store.add_history(
            conn,
            event_id=record["event_id"],
            model_name=name,
            version=version,
            action=action,
            actor=POLICY_ACTOR,
            reason=decision.reason,
            previous_version=previous,
            details=decision.comparison(),
            correlation_id=event.correlation_id,
        )
        await stage(conn, topic, record)

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
            await self._crown(conn, model, version, retire_as="archived")
            await self._announce(conn, record, "promote", previous)
        return await self._publish(record)

    async def shadow(self, name: str, version: int, *, actor: str, reason: str | None) -> ActionResult:
        """Deploy ``version`` as the challenger (scored in shadow, never served)."""
        async with self.store.locked_model(name, create=False) as (conn, model):
            target = await self._target(conn, model, name, version)
            if model["champion_version"] == version:
                raise Conflict(f"{name} v{version} is the champion; a challenger must be another version")
            if model["challenger_version"] == version:
                raise Conflict(f"{name} v{version} is already the challenger")
            previous = model["challenger_version"]
            record = promoted_record(
                target,
                envelope_fields=envelope(self.producer_name),
                action="shadow",
                previous_version=previous,
                reason=reason or f"shadow deployment asked by {actor}",
                actor=actor,
            )
            await self.store.set_roles(conn, name, champion=model["champion_version"], challenger=version)
            await self._announce(conn, record, "shadow", previous)
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
            await self._crown(conn, model, to_version, retire_as="rolled_back")
            await self._announce(conn, record, "rollback", current)
        return await self._publish(record)

    async def _crown(self, conn: Conn, model: Any, version: int, *, retire_as: str) -> None:
        """Make ``version`` the champion; the previous champion, if any, moves to stage ``retire_as``."""
        name, previous, challenger = model["name"], model["champion_version"], model["challenger_version"]
        if previous is not None:
            await self.store.set_stage(conn, name, previous, retire_as)
        await self.store.set_stage(conn, name, version, "champion")
        await self.store.set_roles(
            conn, name, champion=version, challenger=None if challenger == version else challenger
        )

    async def _target(self, conn: Conn, model: Any, name: str, version: int) -> dict[str, Any]:
        if model is None:
            raise NotFound(f"no model {name!r}")
        target = await self.store.version(conn, name, version)
        if target is None:
            raise NotFound(f"{name} has no version {version}")
        return target

    async def _announce(self, conn: Conn, record: dict[str, Any], action: str, previous: int | None) -> None:
        await self.store.add_history(
            conn,
            event_id=record["event_id"],
            model_name=record["model_name"],
            version=record["version"],
            action=action,
            actor=record["actor"],
            reason=record["reason"],
            previous_version=previous,
            correlation_id=record["correlation_id"],
        )
        await stage(conn, MODELS_PROMOTED, record)

    async def _publish(self, record: dict[str, Any]) -> ActionResult:
        """Publish now; if Kafka is down the outbox relay publishes it later."""
        try:
            await asyncio.wait_for(self.outbox.publish([record["event_id"]]), timeout=self.publish_timeout_s)
            return ActionResult(record, True)
        except Exception as exc:
            log.warning("publish_deferred_to_outbox", event_id=record["event_id"], error=repr(exc)[:300])
            return ActionResult(record, False)
