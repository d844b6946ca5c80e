"""Wiring of the deployment service: runtime, model cache rebuild, stream scoring, HTTP app."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from driftline.api import ReadinessCheck, create_app
from driftline.artifacts import ArtifactStore
from driftline.catalog import DEPLOYMENTS_STATUS, FEATURES_VECTORS, MODELS_PROMOTED, PREDICTIONS
from driftline.events import Event
from driftline.follow import TopicFollower
from driftline.logging import get_logger
from driftline.project import project_from_settings
from driftline.runtime import Runtime
from driftline_deployment import api
from driftline_deployment.config import DeploymentSettings
from driftline_deployment.handlers import Deployer, ModelLoader, ModelSlots, ProcessLoader, Scorer, ThreadLoader

log = get_logger(__name__)

SERVICE = "deployment"


class DeploymentService:
    def __init__(self, settings: DeploymentSettings) -> None:
        self.settings = settings
        self.project = project_from_settings(settings.stack)
        self.model_name = self.project.model.name
        self.slots = ModelSlots()
        self.runtime: Runtime | None = None
        self.deployer: Deployer | None = None
        self.follower: TopicFollower | None = None
        self._follower_task: asyncio.Task[None] | None = None
        self._stores: dict[str, ArtifactStore] = {}
        self.loader: ModelLoader = ProcessLoader() if settings.load_in_process else ThreadLoader()

    def _store(self, bucket: str) -> ArtifactStore:
        """The artifact store of a bucket (promotions name theirs)."""
        assert self.runtime is not None and self.runtime.artifacts is not None
        if bucket == self.runtime.artifacts.bucket:
            return self.runtime.artifacts
        if bucket not in self._stores:
            stack = self.settings.stack.model_copy(update={"artifact_bucket": bucket})
            self._stores[bucket] = ArtifactStore.from_settings(stack)
        return self._stores[bucket]

    async def start(self) -> None:
        rt = await Runtime.start(
            SERVICE, self.settings.stack, produces=[PREDICTIONS, DEPLOYMENTS_STATUS], artifacts=True
        )
        self.runtime = rt
        if isinstance(self.loader, ProcessLoader):
            self.loader.start()
        self.deployer = Deployer(
            slots=self.slots,
            producer=rt.producer,
            artifacts=self._store,
            instance_id=self.settings.instance_id,
            default_positive_class=self.project.label.positive_class,
            shadow=self.settings.shadow,
            fallback_depth=self.settings.fallback_depth,
            loader=self.loader,
        )
        scorer = Scorer(slots=self.slots, producer=rt.producer, model_name=self.model_name, shadow=self.settings.shadow)
        rt.add_consumer(
            topics=[FEATURES_VECTORS],
            group_id=self.settings.group_id,
            batch_handler=scorer.score_batch,
            handler=scorer.score_one,
            max_records=self.settings.score_max_records,
        )
        self.follower = TopicFollower(
            name=SERVICE,
            topics=[MODELS_PROMOTED],
            bootstrap_servers=self.settings.stack.kafka_bootstrap_servers,
            serde=rt.serde,
            producer=rt.producer,
            on_replayed=self._replayed,
            on_event=self.deployer.on_event,
        )
        self._follower_task = asyncio.create_task(self.follower.run(), name="follower:models.promoted")

    async def _replayed(self, history: list[Event]) -> None:
        assert self.deployer is not None and self.runtime is not None
        await self.deployer.on_replayed(history)
        # Scoring starts once the model cache is rebuilt, so vectors are not skipped as "no model".
        self.runtime.start_consumers()

    async def stop(self) -> None:
        if self.follower is not None:
            self.follower.stop()
        if self._follower_task is not None:
            await asyncio.gather(self._follower_task, return_exceptions=True)
        try:
            if self.runtime is not None:
                await self.runtime.stop()
        finally:
            await asyncio.to_thread(self.loader.close)

    def readiness(self) -> dict[str, ReadinessCheck]:
        checks: dict[str, ReadinessCheck] = dict(self.runtime.readiness()) if self.runtime else {}

        async def replayed() -> None:
            task = self._follower_task
            if task is None or task.done():
                raise RuntimeError("the models.promoted follower is not running")
            if self.follower is None or not self.follower.caught_up.is_set():
                raise RuntimeError("models.promoted not replayed yet")

        checks["models_replayed"] = replayed
        return checks


def build_app(settings: DeploymentSettings) -> FastAPI:
    service = DeploymentService(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = create_app(
        SERVICE,
        title="Driftline deployment",
        description="Serves the champion model, scores features.vectors, shadows the challenger.",
        lifespan=lifespan,
        readiness=service.readiness,
    )
    app.include_router(api.router(service))
    app.state.service = service
    return app
