"""Builds the registry service: runtime (producer, pool + migrations), handlers, consumers, the
outbox relay and the HTTP app whose lifespan starts and stops them."""

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
    relay: asyncio.Task[None] | None = None

    async def stop(self) -> None:
        if self.relay is not None:
            self.relay.cancel()
            with suppress(asyncio.CancelledError):
                await self.relay
        await self.runtime.stop()


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
        return service.runtime.readiness()

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
