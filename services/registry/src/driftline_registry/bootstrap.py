"""Builds the registry service: runtime (producer, pool + migrations), handlers, the follower of
its own decision topics, consumers, the outbox relay and the HTTP app whose lifespan starts and
stops them.

Start-up order matters: the decision topics (models.promoted, models.rejected) are read back to
their end before models.trained is consumed and before the relay runs, so a rebuilt registry
knows every decision already announced and announces none of them again."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI

from driftline.api import ReadinessCheck, create_app
from driftline.auth import TokenAuth
from driftline.catalog import DEPLOYMENTS_STATUS, MODELS_PROMOTED, MODELS_REJECTED, MODELS_TRAINED
from driftline.follow import TopicFollower
from driftline.outbox import Outbox
from driftline.project import project_from_settings
from driftline.runtime import Runtime
from driftline_registry.api import build_router
from driftline_registry.config import RegistrySettings
from driftline_registry.handlers import SERVICE, RegistryHandlers
from driftline_registry.store import RegistryStore

MIGRATIONS = Path(__file__).parent / "migrations"


@dataclass
class RegistryService:
    runtime: Runtime
    handlers: RegistryHandlers
    follower: TopicFollower | None = None
    following: asyncio.Task[None] | None = None
    relay: asyncio.Task[None] | None = None

    async def stop(self) -> None:
        if self.relay is not None:
            self.relay.cancel()
            with suppress(asyncio.CancelledError):
                await self.relay
        if self.follower is not None and self.following is not None:
            self.follower.stop()
            with suppress(Exception):
                await self.following
        await self.runtime.stop()

    def readiness(self) -> dict[str, ReadinessCheck]:
        checks = self.runtime.readiness()
        following, follower = self.following, self.follower

        async def decision_log() -> None:
            if following is None or follower is None or following.done() or not follower.caught_up.is_set():
                raise RuntimeError("the decision topics are not being followed")

        checks["decision_log"] = decision_log
        return checks

    async def follow_decisions(self) -> None:
        """Read the decision topics to their end, then keep following them."""
        assert self.follower is not None
        self.following = asyncio.create_task(self.follower.run(), name="registry-decision-log")
        caught_up = asyncio.create_task(self.follower.caught_up.wait())
        done, _ = await asyncio.wait({self.following, caught_up}, return_when=asyncio.FIRST_COMPLETED)
        if caught_up not in done:
            caught_up.cancel()
            await self.following  # raises what stopped it
            raise RuntimeError("the decision log follower stopped before it caught up")


async def start(settings: RegistrySettings) -> RegistryService:
    project = project_from_settings(settings.stack)
    rt = await Runtime.start(
        SERVICE,
        settings.stack,
        produces=[MODELS_PROMOTED, MODELS_REJECTED],
        postgres_schema="registry",
        migrations=MIGRATIONS,
    )
    assert rt.pool is not None
    outbox = Outbox(rt.pool, rt.producer)
    handlers = RegistryHandlers(RegistryStore(rt.pool), outbox, project.promotion, rt.producer.name)
    service = RegistryService(rt, handlers)
    service.follower = TopicFollower(
        name="registry-decisions",
        topics=[MODELS_PROMOTED, MODELS_REJECTED],
        bootstrap_servers=settings.stack.kafka_bootstrap_servers,
        serde=rt.serde,
        producer=rt.producer,
        on_replayed=handlers.on_decisions_replayed,
        on_event=handlers.on_decision,
    )
    try:
        await service.follow_decisions()
    except BaseException:
        await service.stop()
        raise
    rt.add_consumer(topics=[MODELS_TRAINED], handler=handlers.on_trained, group_id=settings.group_id)
    rt.add_consumer(
        topics=[DEPLOYMENTS_STATUS], handler=handlers.on_deployment_status, group_id=f"{settings.group_id}-deployments"
    )
    rt.start_consumers()
    service.relay = asyncio.create_task(
        outbox.run_relay(interval_s=settings.outbox_interval_s), name="registry-outbox-relay"
    )
    return service


def build_app(settings: RegistrySettings | None = None) -> FastAPI:
    settings = settings or RegistrySettings()
    auth = TokenAuth.from_settings(settings.stack, SERVICE)
    state: dict[str, RegistryService] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service = await start(settings)
        state["service"] = service
        app.state.handlers = service.handlers
        try:
            yield
        finally:
            await service.stop()

    def readiness() -> Mapping[str, ReadinessCheck]:
        service = state.get("service")
        if service is None:
            return {"startup": _not_started}
        return service.readiness()

    app = create_app(
        SERVICE,
        title="Driftline registry",
        description="Model versions, lineage, stage history and the promotion policy.",
        lifespan=lifespan,
        readiness=readiness,
    )
    app.include_router(build_router(auth))
    return app


async def _not_started() -> None:
    raise RuntimeError("the service is still starting")
