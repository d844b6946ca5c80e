"""What every service builds at start-up, in one place: registry client and serde, producer,
PostgreSQL pool with migrations, artifact store, consumer runners, and their readiness checks.

:func:`driftline.service.start_service` calls :meth:`Runtime.start` with what a service declares, adds its consumers,
and hands the runtime to its handlers and routes; its FastAPI lifespan calls :meth:`Runtime.stop`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from driftline import db
from driftline.api import ReadinessCheck
from driftline.artifacts import ArtifactStore
from driftline.consumer import BatchHandler, ConsumerRunner, Handler
from driftline.logging import get_logger
from driftline.producer import EventProducer
from driftline.projects import ProjectBook
from driftline.serde import AvroSerde, SchemaRegistryClient
from driftline.settings import StackSettings

log = get_logger(__name__)


@dataclass
class Runtime:
    service: str
    stack: StackSettings
    registry: SchemaRegistryClient
    serde: AvroSerde
    producer: EventProducer
    pool: asyncpg.Pool | None = None
    artifacts: ArtifactStore | None = None
    runners: list[ConsumerRunner] = field(default_factory=list)
    # Every project on the projects topic: filled at start (see driftline.projects.apply_at_start),
    # then kept live by the service's projects follower.
    projects: ProjectBook = field(default_factory=ProjectBook)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _buckets: dict[str, ArtifactStore] = field(default_factory=dict)

    def artifacts_for(self, bucket: str) -> ArtifactStore:
        """The artifact store of a bucket: records name the bucket of the object they refer to."""
        if self.artifacts is not None and bucket == self.artifacts.bucket:
            return self.artifacts
        if bucket not in self._buckets:
            stack = self.stack.model_copy(update={"artifact_bucket": bucket})
            self._buckets[bucket] = ArtifactStore.from_settings(stack)
        return self._buckets[bucket]

    @classmethod
    async def start(
        cls,
        service: str,
        stack: StackSettings,
        *,
        produces: Sequence[str] = (),
        postgres_schema: str | None = None,
        migrations: Path | None = None,
        artifacts: bool = False,
        pool_size: int = 5,
        producer_options: Mapping[str, Any] | None = None,
    ) -> Runtime:
        registry = SchemaRegistryClient.from_settings(stack)
        serde = AvroSerde(registry, topic_prefix=stack.topic_prefix)
        producer = EventProducer(stack.kafka, serde, service, **(producer_options or {}))
        rt = cls(service, stack, registry, serde, producer)
        try:
            await producer.start(produces)
            if postgres_schema is not None:
                rt.pool = await db.create_pool(
                    stack.postgres_dsn.get_secret_value(), postgres_schema, max_size=pool_size, ssl=stack.postgres_ssl()
                )
                if migrations is not None:
                    await db.apply_migrations(rt.pool, postgres_schema, migrations)
            if artifacts:
                rt.artifacts = ArtifactStore.from_settings(stack)
                await rt.artifacts.ensure_bucket()
        except BaseException:
            await rt.stop()
            raise
        return rt

    def add_consumer(
        self,
        *,
        topics: Sequence[str],
        group_id: str | None = None,
        handler: Handler | None = None,
        batch_handler: BatchHandler | None = None,
        **options: Any,
    ) -> ConsumerRunner:
        runner = ConsumerRunner(
            group_id=group_id or self.service,
            topics=topics,
            kafka=self.stack.kafka,
            serde=self.serde,
            producer=self.producer,
            handler=handler,
            batch_handler=batch_handler,
            **options,
        )
        self.runners.append(runner)
        return runner

    def start_consumers(self) -> None:
        for runner in self.runners:
            task = asyncio.create_task(runner.run(), name=f"consumer:{runner.group_id}")
            task.add_done_callback(self._consumer_done)
            self._tasks.append(task)

    def _consumer_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("consumer_crashed", task=task.get_name(), error=repr(task.exception()))

    async def stop(self) -> None:
        for runner in self.runners:
            runner.stop()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        try:
            await self.producer.stop()
        finally:
            if self.pool is not None:
                await self.pool.close()
            await self.registry.close()

    def readiness(self) -> dict[str, ReadinessCheck]:
        checks: dict[str, ReadinessCheck] = {"kafka": self.producer.ping, "schema_registry": self.registry.ping}
        if self.pool is not None:
            pool = self.pool
            checks["postgres"] = lambda: db.ping(pool)
        if self.artifacts is not None:
            checks["object_store"] = self.artifacts.ping
        for task in self._tasks:
            checks[task.get_name()] = _task_alive(task)
        return checks


def _task_alive(task: asyncio.Task[None]) -> ReadinessCheck:
    async def check() -> None:
        if task.done():
            raise RuntimeError("consumer loop is not running")

    return check
