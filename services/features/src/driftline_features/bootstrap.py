"""Builds the features service: runtime (serde, producer, PostgreSQL), the faust app and its agent,
and the FastAPI app serving the online store next to it, in one process and one event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import faust
from fastapi import FastAPI
from faust.contrib.asgi import faust_app_running

from driftline.api import ReadinessCheck, create_app
from driftline.catalog import FEATURES_VECTORS
from driftline.logging import get_logger
from driftline.project import project_from_settings
from driftline.runtime import Runtime
from driftline_features import api, stream
from driftline_features.config import SERVICE, FeaturesSettings
from driftline_features.handlers import FeatureProcessor
from driftline_features.store import OnlineStore
from driftline_ml.featuredefs import FeatureSet

log = get_logger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"
PRUNE_EVERY_S = 600.0


@dataclass
class Components:
    runtime: Runtime
    store: OnlineStore
    features: FeatureSet
    processor: FeatureProcessor
    app: faust.App
    control: stream.StreamControl

    def readiness(self) -> dict[str, ReadinessCheck]:
        app, control = self.app, self.control
        return {**self.runtime.readiness(), "stream": lambda: stream.readiness(app, control)}


class Holder:
    """What the routes and /readyz see; filled in by the lifespan."""

    def __init__(self) -> None:
        self.components: Components | None = None

    def get(self) -> Components:
        if self.components is None:
            raise RuntimeError("the service is starting")
        return self.components

    def readiness(self) -> dict[str, ReadinessCheck]:
        if self.components is None:

            async def starting() -> None:
                raise RuntimeError("starting")

            return {"startup": starting}
        return self.components.readiness()


async def _prune_history(store: OnlineStore, days: float) -> None:
    while True:
        try:
            deleted = await store.prune(days)
            if deleted:
                log.info("vectors_pruned", deleted=deleted, older_than_days=days)
        except Exception as exc:
            log.warning("vectors_prune_failed", error=repr(exc)[:300])
        await asyncio.sleep(PRUNE_EVERY_S)


def build_app(settings: FeaturesSettings | None = None) -> FastAPI:
    settings = settings or FeaturesSettings()
    holder = Holder()

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        stack = settings.stack
        project = project_from_settings(stack)
        features = FeatureSet(project.features, keep_last=settings.dedupe_keep, max_entries=settings.max_entity_events)
        partitions, replication = await stream.source_layout(stack)
        rt = await Runtime.start(
            SERVICE,
            stack,
            produces=[FEATURES_VECTORS],
            postgres_schema=SERVICE,
            migrations=MIGRATIONS,
            pool_size=settings.store_pool_size,
        )
        try:
            assert rt.pool is not None
            store = OnlineStore(rt.pool)
            control_ref: list[stream.StreamControl] = []
            processor = FeatureProcessor(
                project=project,
                features=features,
                decoder=rt.serde,
                producer=rt.producer,
                store=store,
                group=stack.topic_prefix + SERVICE,
                stopping=lambda: bool(control_ref and control_ref[0].stopping),
            )
            fapp, control = stream.build_stream(
                settings,
                processor,
                partitions=partitions,
                replication_factor=replication,
            )
            control_ref.append(control)
            holder.components = Components(rt, store, features, processor, fapp, control)
            log.info(
                "features_starting",
                app_id=fapp.conf.id,
                feature_set_version=features.version,
                features=features.names,
                partitions=partitions,
            )
            if settings.faust_log_level:  # the platform keeps these at WARNING; rebalances show at INFO
                for name in ("faust", "mode", "aiokafka"):
                    logging.getLogger(name).setLevel(settings.faust_log_level.upper())
            async with faust_app_running(fapp):
                pruner = (
                    asyncio.create_task(_prune_history(store, settings.history_retention_days))
                    if settings.history_retention_days > 0
                    else None
                )
                try:
                    yield
                finally:
                    if pruner is not None:
                        pruner.cancel()
                    await control.drain(settings.drain_timeout_s)
        finally:
            holder.components = None
            await rt.stop()
            log.info("features_stopped")

    app = create_app(
        SERVICE,
        title="Driftline features",
        description="Per-entity windowed features from events.raw to features.vectors, and the online store.",
        lifespan=lifespan,
        readiness=holder.readiness,
    )
    app.include_router(api.router(lambda: holder.get().store, lambda: holder.get().features.version))
    return app
