"""The registry service: what it consumes, reads back and produces, and the one place that wires it.

Start-up order matters: the decision topics (models.promoted, models.rejected) are read back to
their end before models.trained is consumed and before the outbox relay runs, so a rebuilt
registry knows every decision already announced and announces none of them again.
"""

from __future__ import annotations

import asyncio
from contextlib import suppress
from pathlib import Path

from driftline.auth import TokenAuth
from driftline.catalog import DEPLOYMENTS_STATUS, MODELS_COMPARED, MODELS_PROMOTED, MODELS_REJECTED, MODELS_TRAINED
from driftline.follow import TopicFollower
from driftline.outbox import Outbox
from driftline.project import PromotionPolicy, project_from_settings
from driftline.runtime import Runtime
from driftline.service import Consume, Service, Wiring
from driftline_registry.api import RegistryDeps, router
from driftline_registry.config import RegistrySettings
from driftline_registry.handlers import RegistryHandlers
from driftline_registry.store import RegistryStore

DECISION_TOPICS = (MODELS_PROMOTED, MODELS_REJECTED)


async def wire(rt: Runtime, settings: RegistrySettings) -> Wiring[RegistryDeps]:
    assert rt.pool is not None
    outbox = Outbox(rt.pool, rt.producer)
    await outbox.ensure_table()
    projects = rt.projects

    def policies(model_name: str) -> PromotionPolicy | None:
        applied = projects.by_model(model_name)
        return applied.project.promotion if applied is not None else None

    h = RegistryHandlers(
        RegistryStore(rt.pool),
        outbox,
        project_from_settings(settings.stack).promotion,
        rt.producer.name,
        policies=policies,
    )
    auth = TokenAuth.from_settings(settings.stack, rt.service)
    follower, following = await _read_back_decisions(rt, h)

    async def decision_log() -> None:
        if following.done():
            raise RuntimeError("the decision topics are not being followed")

    async def stop_following() -> None:
        follower.stop()
        with suppress(Exception):
            await following

    return Wiring(
        deps=RegistryDeps(h, auth, rt.projects),
        consumes=[
            Consume(routes={MODELS_TRAINED: h.on_model_trained}, group=settings.group_id),
            Consume(routes={DEPLOYMENTS_STATUS: h.on_deployment_status}, group=f"{settings.group_id}-deployments"),
            Consume(routes={MODELS_COMPARED: h.on_challenger_compared}, group=f"{settings.group_id}-verdicts"),
        ],
        loops=[lambda: outbox.run_relay(interval_s=settings.outbox_interval_s)],
        readiness={"decision_log": decision_log},
        on_stop=[stop_following],
    )


async def _read_back_decisions(rt: Runtime, h: RegistryHandlers) -> tuple[TopicFollower, asyncio.Task[None]]:
    """Read the decision topics to their end, then keep following them; returns once caught up.

    Not a :class:`~driftline.service.Follow`: its live routes get a record alone, and the decision
    log keeps each decision's place on its topic (partition, offset: the order of decisions made
    in the same millisecond); and the relay must not run before the read-back (it would send
    again an event that is on its topic but not yet marked published). Returning only once caught
    up holds back the consumers and the relay, which start after ``wire``.
    """
    follower = TopicFollower(
        name="registry-decisions",
        topics=DECISION_TOPICS,
        kafka=rt.stack.kafka,
        serde=rt.serde,
        producer=rt.producer,
        on_replayed=h.on_decisions_replayed,
        on_event=h.on_decision,
    )
    following = asyncio.create_task(follower.run(), name="registry-decision-log")
    caught_up = asyncio.create_task(follower.caught_up.wait())
    try:
        done, _ = await asyncio.wait({following, caught_up}, return_when=asyncio.FIRST_COMPLETED)
        if caught_up not in done:
            await following  # raises what stopped it
            raise RuntimeError("the decision log follower stopped before it caught up")
    except BaseException:
        caught_up.cancel()
        follower.stop()
        with suppress(Exception):
            await following
        raise
    return follower, following


SERVICE: Service[RegistrySettings, RegistryDeps] = Service(
    name="registry",
    title="Driftline registry",
    description="Model versions, lineage, stage history and the promotion policy.",
    wire=wire,
    produces=DECISION_TOPICS,
    routers=[router],
    postgres_schema="registry",
    migrations=Path(__file__).parent / "migrations",
)
