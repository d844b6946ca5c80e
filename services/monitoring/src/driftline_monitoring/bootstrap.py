"""Wiring of the monitoring service: runtime (PostgreSQL schema ``monitoring``), the champion
follower (models.promoted and deployments.status), the consumer group, and the HTTP app."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from fastapi import FastAPI

from driftline.api import ReadinessCheck, create_app
from driftline.artifacts import ArtifactStore
from driftline.catalog import (
    DEPLOYMENTS_STATUS,
    DRIFT_DETECTED,
    FEATURES_VECTORS,
    LABELS,
    MODELS_PROMOTED,
    PREDICTIONS,
)
from driftline.events import Event
from driftline.follow import TopicFollower
from driftline.project import project_from_settings
from driftline.runtime import Runtime
from driftline_monitoring import api
from driftline_monitoring.config import MonitoringSettings
from driftline_monitoring.handlers import Monitoring
from driftline_monitoring.store import MonitoringStore

SERVICE = "monitoring"
MIGRATIONS = Path(__file__).parent / "migrations"


class MonitoringService:
    def __init__(self, settings: MonitoringSettings) -> None:
        self.settings = settings
        self.policy = project_from_settings(settings.stack).drift
        self.runtime: Runtime | None = None
        self.store: MonitoringStore | None = None
        self.monitoring: Monitoring | None = None
        self.follower: TopicFollower | None = None
        self._follower_task: asyncio.Task[None] | None = None
        self._stores: dict[str, ArtifactStore] = {}

    def _artifacts(self, bucket: str) -> ArtifactStore:
        assert self.runtime is not None and self.runtime.artifacts is not None
        if bucket == self.runtime.artifacts.bucket:
            return self.runtime.artifacts
        if bucket not in self._stores:
            stack = self.settings.stack.model_copy(update={"artifact_bucket": bucket})
            self._stores[bucket] = ArtifactStore.from_settings(stack)
        return self._stores[bucket]

    async def start(self) -> None:
        rt = await Runtime.start(
            SERVICE,
            self.settings.stack,
            produces=[DRIFT_DETECTED],
            postgres_schema=SERVICE,
            migrations=MIGRATIONS,
            artifacts=True,
        )
        self.runtime = rt
        assert rt.pool is not None
        self.store = MonitoringStore(rt.pool)
        self.monitoring = Monitoring(
            policy=self.policy,
            producer=rt.producer,
            store=self.store,
            artifacts=self._artifacts,
            resolve_after=self.settings.resolve_after,
            join_capacity=self.settings.join_capacity,
            touch_every_s=self.settings.touch_every_s,
        )
        rt.add_consumer(
            topics=[FEATURES_VECTORS, PREDICTIONS, LABELS],
            group_id=self.settings.group_id,
            batch_handler=self.monitoring.handle_batch,
            max_records=self.settings.max_records,
            # Same partition number of the three entity-keyed topics on the same instance (the joins).
            consumer_options={"partition_assignment_strategy": (RangePartitionAssignor,)},
        )
        self.follower = TopicFollower(
            name=SERVICE,
            # What is promoted, and what deployment then serves (a refused promotion changes nothing).
            topics=[MODELS_PROMOTED, DEPLOYMENTS_STATUS],
            bootstrap_servers=self.settings.stack.kafka_bootstrap_servers,
            serde=rt.serde,
            producer=rt.producer,
            on_replayed=self._replayed,
            on_event=self.monitoring.on_followed,
        )
        self._follower_task = asyncio.create_task(self.follower.run(), name="follower:models")

    async def _replayed(self, history: list[Event]) -> None:
        assert self.monitoring is not None and self.runtime is not None
        await self.monitoring.on_replayed(history)
        # The group starts once the champions are known, so early records are not ignored.
        self.runtime.start_consumers()

    async def stop(self) -> None:
        if self.follower is not None:
            self.follower.stop()
        if self._follower_task is not None:
            await asyncio.gather(self._follower_task, return_exceptions=True)
        if self.runtime is not None:
            await self.runtime.stop()

    def readiness(self) -> dict[str, ReadinessCheck]:
        checks: dict[str, ReadinessCheck] = dict(self.runtime.readiness()) if self.runtime else {}

        async def replayed() -> None:
            task = self._follower_task
            if task is None or task.done():
                raise RuntimeError("the models.promoted / deployments.status follower is not running")
            if self.follower is None or not self.follower.caught_up.is_set():
                raise RuntimeError("models.promoted and deployments.status not replayed yet")

        checks["models_replayed"] = replayed
        return checks


def build_app(settings: MonitoringSettings) -> FastAPI:
    service = MonitoringService(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = create_app(
        SERVICE,
        title="Driftline monitoring",
        description="Input, prediction and performance drift of the champion models; drift episodes.",
        lifespan=lifespan,
        readiness=service.readiness,
    )
    app.include_router(api.router(service))
    app.state.service = service
    return app
