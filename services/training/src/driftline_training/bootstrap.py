"""Builds the training service: runtime (producer, pool + migrations, object store), handlers,
consumers, the outbox relay and the HTTP app whose lifespan starts and stops them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI

from driftline.api import ReadinessCheck, create_app
from driftline.auth import TokenAuth
from driftline.catalog import (
    DRIFT_DETECTED,
    FEATURES_VECTORS,
    LABELS,
    MODELS_PROMOTED,
    MODELS_TRAINED,
    TRAINING_FAILED,
    TRAINING_REQUESTED,
)
from driftline.events import Event
from driftline.outbox import Outbox
from driftline.project import project_from_settings
from driftline.runtime import Runtime
from driftline_training.api import ApiContext, build_router
from driftline_training.config import TrainingSettings
from driftline_training.handlers import SERVICE, TrainingHandlers
from driftline_training.store import TrainingStore

MIGRATIONS = Path(__file__).parent / "migrations"


@dataclass
class TrainingService:
    runtime: Runtime
    store: TrainingStore
    outbox: Outbox
    handlers: TrainingHandlers
    relay: asyncio.Task[None] | None = None

    async def stop(self) -> None:
        if self.relay is not None:
            self.relay.cancel()
            with suppress(asyncio.CancelledError):
                await self.relay
        await self.runtime.stop()


async def start(settings: TrainingSettings, *, consumers: bool = True) -> TrainingService:
    """Connect everything and (unless ``consumers`` is False, e.g. for a benchmark) start consuming."""
    project = project_from_settings(settings.stack)
    rt = await Runtime.start(
        SERVICE,
        settings.stack,
        produces=[TRAINING_REQUESTED, MODELS_TRAINED, TRAINING_FAILED],
        postgres_schema="training",
        migrations=MIGRATIONS,
        artifacts=True,
    )
    assert rt.pool is not None and rt.artifacts is not None
    store = TrainingStore(rt.pool)
    outbox = Outbox(rt.pool, rt.producer)
    handlers = TrainingHandlers(
        project=project,
        store=store,
        artifacts=rt.artifacts,
        outbox=outbox,
        producer_name=rt.producer.name,
        object_store_timeout_s=settings.object_store_timeout_s,
        max_run_seconds=settings.max_run_seconds,
        run_attempts=settings.run_attempts,
        retry_backoff_s=settings.retry_backoff_s,
        min_comparison_examples=settings.min_comparison_examples,
    )
    service = TrainingService(rt, store, outbox, handlers)
    if not consumers:
        return service

    async def control(event: Event) -> None:
        if event.topic == DRIFT_DETECTED:
            await handlers.on_drift(event)
        else:
            await handlers.on_promoted(event)

    # Three groups so that a long fit never delays examples or champion updates.
    rt.add_consumer(topics=[FEATURES_VECTORS, LABELS], batch_handler=handlers.on_examples, group_id=SERVICE)
    rt.add_consumer(topics=[DRIFT_DETECTED, MODELS_PROMOTED], handler=control, group_id=f"{SERVICE}-control")
    rt.add_consumer(
        topics=[TRAINING_REQUESTED],
        handler=handlers.on_request,
        group_id=f"{SERVICE}-runs",
        max_records=1,
        consumer_options={"max_poll_interval_ms": int((settings.max_run_seconds + 120) * 1000)},
    )
    rt.start_consumers()
    service.relay = asyncio.create_task(
        outbox.run_relay(interval_s=settings.outbox_interval_s), name="training-outbox-relay"
    )
    return service


def build_app(settings: TrainingSettings | None = None) -> FastAPI:
    settings = settings or TrainingSettings()
    auth = TokenAuth.from_settings(settings.stack, SERVICE)
    state: dict[str, TrainingService] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service = await start(settings)
        state["service"] = service
        app.state.ctx = ApiContext(service.handlers.project, service.store, service.runtime.producer)
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
        title="Driftline training",
        description="Labelled examples, governed retraining and safe model artifacts.",
        lifespan=lifespan,
        readiness=readiness,
    )
    app.include_router(build_router(auth))
    return app


async def _not_started() -> None:
    raise RuntimeError("the service is still starting")
