"""The one service shape: a service declares what it is; this module runs it.

A service's ``service.py`` builds a :class:`Service`: its name, what it produces, its PostgreSQL
schema and migrations, whether it uses the object store, its routers, and ``wire`` — the one
function that builds its store and handlers on a started :class:`~driftline.runtime.Runtime` and
returns a :class:`Wiring`: what it consumes (topic → handler, per consumer group), what it
follows (control topics replayed in full at start), its background loops and extra readiness
checks. The library owns the rest, in this order:

1. start the runtime (registry client and serde, producer, pool + migrations, object store);
2. ``wire`` the service;
3. start the followers (every service follows the ``projects`` topic into ``rt.projects``, having
   applied its ``DRIFTLINE_PROJECT_FILE`` at step 1, see :func:`driftline.project_topic.apply_at_start`);
   once every follower has replayed its history (the caught-up gate),
   start the consumer groups and the background loops (an outbox relay, say), so no record is
   handled and nothing is announced before the state it depends on is known;
4. serve HTTP; ``/readyz`` checks every dependency, every consumer
   loop and every follower;
5. on shutdown (SIGTERM via uvicorn's lifespan): stop the loops, the followers, the consumers
   (each finishes and commits its batch), the wiring's own ``on_stop``, then the runtime.

Routes reach the service's objects through FastAPI's ``Depends(wired)`` — no import of the
bootstrap, no global. The entry point of a service is ``run(SERVICE, Settings)``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import uvicorn
from fastapi import APIRouter, FastAPI, HTTPException, Request

from driftline import tracing
from driftline.api import ReadinessCheck, create_app
from driftline.auth import ScopeMiddleware, TokenAuth
from driftline.catalog import PROJECTS
from driftline.consumer import BatchHandler, Handler, Routes, dispatch
from driftline.events import Event
from driftline.follow import TopicFollower
from driftline.logging import configure_logging, get_logger
from driftline.project_topic import apply_at_start
from driftline.runtime import Runtime
from driftline.settings import ServiceSettings

log = get_logger(__name__)

D = TypeVar("D")
S = TypeVar("S", bound=ServiceSettings)


@dataclass(frozen=True)
class Consume:
    """One consumer group: ``routes`` (topic → handler of one typed record) and/or ``batch``
    (a whole batch of events, e.g. for one COPY; when it fails on a record the batch is handled
    again one event at a time through the routes, or through ``batch`` alone, to isolate it).
    ``topics`` defaults to the routes' topics. ``options`` go to the
    :class:`~driftline.consumer.ConsumerRunner` (``max_records``, ``consumer_options``, ...)."""

    routes: Routes = field(default_factory=dict)
    batch: BatchHandler | None = None
    topics: Sequence[str] = ()
    group: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)

    def topic_list(self) -> list[str]:
        return list(self.topics or self.routes)


@dataclass(frozen=True)
class Follow:
    """A control topic set every copy of the service reads in full: ``on_replayed`` gets the
    history at start (in offset order per partition), then ``routes`` take each live record —
    or ``on_event`` takes each live :class:`Event`, where its partition and offset matter."""

    name: str
    topics: Sequence[str]
    on_replayed: Callable[[list[Event[Any]]], Awaitable[None]]
    routes: Routes = field(default_factory=dict)
    on_event: Handler | None = None


@dataclass
class Wiring(Generic[D]):
    """What ``wire`` returns: the service's objects (``deps``, reached by routes through
    ``Depends(wired)``) and what the library runs for it."""

    deps: D
    consumes: Sequence[Consume] = ()
    follows: Sequence[Follow] = ()
    loops: Sequence[Callable[[], Awaitable[None]]] = ()
    readiness: Mapping[str, ReadinessCheck] = field(default_factory=dict)
    context: Callable[[], contextlib.AbstractAsyncContextManager[Any]] | None = None
    """Held open while the service runs (e.g. the features service's faust app)."""
    on_stop: Sequence[Callable[[], Awaitable[None]]] = ()


@dataclass(frozen=True)
class Service(Generic[S, D]):
    name: str
    title: str
    description: str
    wire: Callable[[Runtime, S], Awaitable[Wiring[D]]]
    produces: Sequence[str] = ()
    routers: Sequence[APIRouter] = ()
    postgres_schema: str | None = None
    migrations: Path | None = None
    artifacts: bool = False
    pool_size: Callable[[S], int] = lambda _settings: 5
    producer_options: Callable[[S], Mapping[str, Any]] = lambda _settings: {}
    customize: Callable[[FastAPI, S], None] | None = None
    """Adjusts the built app with its settings (e.g. OpenAPI request bodies that depend on the project)."""
    scopes: Mapping[str, str] = field(default_factory=dict)
    """Paths that need a token scope other than GET's ``read`` outside local mode (``driftline.auth``)."""


class Running(Generic[D]):
    """A started service: its runtime, wiring, followers and tasks."""

    def __init__(self, runtime: Runtime, wiring: Wiring[D]) -> None:
        self.runtime = runtime
        self.wiring = wiring
        self.followers: list[TopicFollower] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._follower_tasks: list[asyncio.Task[None]] = []

    @property
    def deps(self) -> D:
        return self.wiring.deps

    def start(self) -> None:
        rt = self.runtime
        for consume in self.wiring.consumes:
            routes = dict(consume.routes)
            rt.add_consumer(
                topics=consume.topic_list(),
                group_id=consume.group,
                handler=dispatch(routes) if routes else None,
                batch_handler=consume.batch,
                **dict(consume.options),
            )
        # Every service follows the projects: consumers start once the projects are known too.
        book = rt.projects
        projects = Follow(
            name="projects", topics=[PROJECTS], on_replayed=book.replay, routes={PROJECTS: book.on_record}
        )
        for follow in [projects, *self.wiring.follows]:
            follower = TopicFollower(
                name=follow.name,
                topics=follow.topics,
                kafka=rt.stack.kafka,
                serde=rt.serde,
                producer=rt.producer,
                on_replayed=follow.on_replayed,
                on_event=follow.on_event or dispatch(follow.routes),
            )
            self.followers.append(follower)
            self._follower_tasks.append(asyncio.create_task(follower.run(), name=f"follower:{follow.name}"))
        self._tasks.append(asyncio.create_task(self._start_when_caught_up(), name="caught-up-gate"))

    async def _start_when_caught_up(self) -> None:
        await asyncio.gather(*(f.caught_up.wait() for f in self.followers))
        self.runtime.start_consumers()
        for i, loop in enumerate(self.wiring.loops):
            self._tasks.append(asyncio.create_task(_forever(loop), name=f"loop:{i}"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for follower in self.followers:
            follower.stop()
        await asyncio.gather(*self._follower_tasks, return_exceptions=True)
        try:
            for runner in self.runtime.runners:
                runner.stop()
            for fn in self.wiring.on_stop:
                try:
                    await fn()
                except Exception as exc:
                    log.warning("on_stop_failed", error=repr(exc)[:300])
        finally:
            await self.runtime.stop()

    def readiness(self) -> dict[str, ReadinessCheck]:
        checks = dict(self.runtime.readiness())
        for follower, task in zip(self.followers, self._follower_tasks, strict=True):
            checks[f"follower:{follower.name}"] = _follower_ready(follower, task)
        checks.update(self.wiring.readiness)
        return checks


def _follower_ready(follower: TopicFollower, task: asyncio.Task[None]) -> ReadinessCheck:
    async def check() -> None:
        if task.done():
            raise RuntimeError(f"the {', '.join(follower.topics)} follower is not running")
        if not follower.caught_up.is_set():
            raise RuntimeError(f"{', '.join(follower.topics)} not replayed yet")

    return check


async def _forever(loop: Callable[[], Awaitable[None]]) -> None:
    try:
        await loop()
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # a background loop reports its own failures; note the crash
        log.error("background_loop_crashed", error=repr(exc)[:500])


async def _starting() -> None:
    raise RuntimeError("the service is still starting")


async def wire_service(service: Service[S, D], settings: S) -> tuple[Runtime, Wiring[D]]:
    """Start the runtime and wire the service, without starting anything that consumes (benchmarks
    and tools drive the handlers themselves); the caller stops the runtime."""
    rt = await Runtime.start(
        service.name,
        settings.stack,
        produces=service.produces,
        postgres_schema=service.postgres_schema,
        migrations=service.migrations,
        artifacts=service.artifacts,
        pool_size=service.pool_size(settings),
        producer_options=service.producer_options(settings),
    )
    try:
        await apply_at_start(rt)
        wiring = await service.wire(rt, settings)
    except BaseException:
        await rt.stop()
        raise
    return rt, wiring


async def start_service(service: Service[S, D], settings: S) -> Running[D]:
    """Start the runtime, wire the service and start its followers, consumers and loops."""
    rt, wiring = await wire_service(service, settings)
    running = Running(rt, wiring)
    running.start()
    # Where it connected and how (never a secret: see KafkaConnection.__str__).
    log.info("service_started", service=service.name, kafka=str(settings.stack.kafka))
    return running


def build_app(service: Service[S, D], settings: S) -> FastAPI:
    """The service's FastAPI app: its lifespan starts and stops everything in the order above."""
    holder: dict[str, Running[D]] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        running = await start_service(service, settings)
        try:
            async with contextlib.AsyncExitStack() as stack:
                if running.wiring.context is not None:
                    await stack.enter_async_context(running.wiring.context())
                holder["running"] = running
                app.state.deps = running.deps
                app.state.running = running
                yield
        finally:
            holder.pop("running", None)
            await running.stop()

    def readiness() -> Mapping[str, ReadinessCheck]:
        running = holder.get("running")
        return {"startup": _starting} if running is None else running.readiness()

    app: FastAPI = create_app(
        service.name,
        title=service.title,
        description=service.description,
        lifespan=lifespan,
        readiness=readiness,
    )
    for router in service.routers:
        app.include_router(router)
    if not settings.stack.local_mode:  # reads and predict need a token with the scope (driftline.auth)
        app.add_middleware(
            ScopeMiddleware, auth=TokenAuth.from_settings(settings.stack, service.name), scopes=service.scopes
        )
    if service.customize is not None:
        service.customize(app, settings)
    return app


def wired(request: Request) -> Any:
    """FastAPI dependency: the service's ``deps`` (503 while it is starting). Services type it:
    ``Deps = Annotated[TrainingDeps, Depends(wired)]``."""
    deps = getattr(request.app.state, "deps", None)
    if deps is None:
        raise HTTPException(503, detail={"error": "starting", "reason": "the service is still starting"})
    return deps


def serve(app: FastAPI, settings: ServiceSettings, service: str) -> None:
    """Serve an app with uvicorn; SIGTERM/SIGINT become a lifespan shutdown."""
    configure_logging(service, settings.stack.log_level, settings.stack.log_format)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=30,
        lifespan="on",
    )


def run(service: Service[S, D], settings_cls: Callable[[], S]) -> None:
    """A service process's whole entry point: settings, logging, the app, uvicorn."""
    settings = settings_cls()
    # Before the app is built, so start-up warnings (the local-mode token) are JSON lines too.
    configure_logging(service.name, settings.stack.log_level, settings.stack.log_format)
    tracing.setup(service.name)  # OTLP export only when the OTEL_* variables ask for it
    try:
        serve(build_app(service, settings), settings, service.name)
    finally:
        tracing.shutdown()  # flushes the spans still in the exporter's queue
