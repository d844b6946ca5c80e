"""Start-up of ingestion: the runtime (registry, serde, producer), the handler, the token check."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import FastAPI

from driftline.auth import TokenAuth
from driftline.catalog import EVENTS_RAW, LABELS
from driftline.logging import get_logger
from driftline.runtime import Runtime
from driftline.validation import Validator
from driftline_ingestion.config import IngestionSettings
from driftline_ingestion.handlers import IngestHandler
from driftline_ingestion.store import IdempotencyKeys

log = get_logger(__name__)
SERVICE = "ingestion"


async def bootstrap(settings: IngestionSettings, validator: Validator) -> tuple[Runtime, IngestHandler]:
    rt = await Runtime.start(
        SERVICE,
        settings.stack,
        produces=[EVENTS_RAW, LABELS],
        producer_options={"linger_ms": settings.linger_ms, "max_batch_size": settings.producer_batch_bytes},
    )
    handler = IngestHandler(
        rt.producer,
        validator,
        IdempotencyKeys(settings.dedupe_horizon_s, settings.dedupe_max_keys),
        max_batch=settings.max_batch,
        max_in_flight=settings.max_in_flight,
        max_in_flight_bytes=settings.max_in_flight_bytes,
        ack_timeout_s=settings.ack_timeout_s,
        retry_after_s=settings.retry_after_s,
    )
    return rt, handler


def ingestion_lifespan(
    settings: IngestionSettings, validator: Validator
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.auth = TokenAuth.from_settings(settings.stack, SERVICE)
        rt, handler = await bootstrap(settings, validator)
        app.state.handler = handler
        app.state.checks["readiness"] = rt.readiness
        log.info(
            "ingestion_started",
            port=settings.port,
            event_types=sorted(validator.event_types),
            topic_prefix=settings.stack.topic_prefix,
            max_batch=settings.max_batch,
            max_in_flight=settings.max_in_flight,
            max_in_flight_bytes=settings.max_in_flight_bytes,
        )
        try:
            yield
        finally:
            await rt.stop()  # flushes what is still in flight before the process exits

    return lifespan
