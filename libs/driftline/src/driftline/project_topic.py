"""The ``projects`` topic read and written (the CLI, and a service applying its
``DRIFTLINE_PROJECT_FILE`` at start); the planning and the book are :mod:`driftline.projects`.

Every apply and delete of a project is serialised by :func:`project_lock`, a PostgreSQL advisory
lock on the install's database: the writer reads the topic, plans against what it holds and
publishes (acknowledged by every in-sync replica, so the next reader of the topic sees it) while
holding it. Two applies of one project at the same moment therefore become two versions, the
second planned (and checked for compatibility) against the first, never two records of one
version where the later silently drops the other's changes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from driftline.catalog import PROJECTS
from driftline.projects import (
    Applied,
    Definition,
    Plan,
    ProjectBook,
    ProjectRefused,
    applied_record,
    book_of,
    deleted_record,
)
from driftline.records import ProjectApplied
from driftline.settings import StackSettings

LOCK_TIMEOUT_S = 60.0


class ProjectLockError(RuntimeError):
    """The project's apply lock could not be taken: another apply or delete held it for longer
    than the wait, or the install's PostgreSQL could not be reached."""


@asynccontextmanager
async def project_lock(
    stack: StackSettings, name: str, *, timeout_s: float = LOCK_TIMEOUT_S, retry: bool = False
) -> AsyncIterator[None]:
    """Hold the apply lock of project ``name`` on this install (its topic prefix): a session-level
    advisory lock on a connection of its own, released when the block ends or the process dies.
    ``retry``: wait out a database outage (a service starting) rather than fail (the CLI)."""
    import asyncpg

    from driftline.retry import retry_transient

    dsn = stack.postgres_dsn.get_secret_value()

    async def connect() -> Any:
        return await asyncpg.connect(dsn, timeout=10, ssl=stack.postgres_ssl())

    try:
        conn = await (retry_transient(connect, what="postgres (project lock)") if retry else connect())
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        raise ProjectLockError(
            f"cannot take the apply lock of project {name!r}: PostgreSQL is not reachable ({type(exc).__name__}: {exc})"
        ) from None
    try:
        try:
            key = f"driftline.projects:{stack.topic_prefix}{name}"
            await asyncio.wait_for(conn.execute("SELECT pg_advisory_lock(hashtextextended($1, 0))", key), timeout_s)
        except TimeoutError:
            raise ProjectLockError(
                f"another apply or delete of project {name!r} has held its lock for {timeout_s:.0f} s; try again"
            ) from None
        yield
    finally:
        await conn.close()  # ends the session: the lock goes with it


async def read_book(stack: StackSettings) -> ProjectBook:
    """The projects on the topic now (read from its beginning to its end)."""
    from driftline.history import read_topics

    events = await read_topics(stack, [PROJECTS])
    return book_of(e.record for e in events)


async def _publish(stack: StackSettings, producer_name: str, record: ProjectApplied, *, tombstone: bool) -> None:
    from driftline.producer import EventProducer
    from driftline.serde import AvroSerde, SchemaRegistryClient

    registry = SchemaRegistryClient.from_settings(stack)
    producer = EventProducer(stack.kafka, AvroSerde(registry, topic_prefix=stack.topic_prefix), producer_name)
    try:
        await asyncio.wait_for(producer.start([PROJECTS]), 60)
        await producer.publish(PROJECTS, record)
        if tombstone:
            await producer.tombstone(PROJECTS, record.project.encode())
    finally:
        await producer.stop()
        await registry.close()


async def apply_definition(
    stack: StackSettings, definition: Definition, *, applied_by: str, producer: str = "cli", dry_run: bool = False
) -> Plan:
    """Plan the apply against the topic and publish it unless it is refused (ProjectRefused),
    unchanged or a ``dry_run``; under the project's lock (see the module), except a dry run."""
    if dry_run:
        return _checked((await read_book(stack)).plan(definition))
    async with project_lock(stack, definition.name):
        p = _checked((await read_book(stack)).plan(definition))
        if not p.unchanged:
            record = applied_record(definition, p, producer=producer, applied_by=applied_by)
            await _publish(stack, producer, record, tombstone=False)
    return p


def _checked(p: Plan) -> Plan:
    if p.refused:
        raise ProjectRefused(p.name, p.refused)
    return p


async def delete_project(stack: StackSettings, name: str, *, applied_by: str, producer: str = "cli") -> Applied:
    """Publish the deletion of a project and a tombstone for its key (under the project's lock);
    KeyError when there is none."""
    async with project_lock(stack, name):
        current = (await read_book(stack)).get(name)
        if current is None:
            raise KeyError(name)
        record = deleted_record(current, producer=producer, applied_by=applied_by)
        await _publish(stack, producer, record, tombstone=True)
    return current


def applied_by_default() -> str:
    import getpass
    import socket

    try:
        return f"{getpass.getuser()}@{socket.gethostname()}"
    except Exception:  # no user name in some containers
        return "unknown"


SERVICE_APPLIED = "service:"  # applied_by of a project a service applied from its file at start


async def apply_at_start(rt: Any) -> None:
    """Fill ``rt.projects`` from the topic, and apply the service's project file there first.

    The file is ``DRIFTLINE_PROJECT_FILE``, else the checkout's example (none outside a checkout).
    It is applied when the topic does not have the project, or has another version that a service
    applied from its file; a version applied with ``driftline projects apply`` is not overwritten
    by a restart (logged, ``project_file_not_applied``), nor is a file that would be refused
    (``project_file_refused``): the service then serves what the topic holds."""
    from driftline.logging import get_logger
    from driftline.project import EXAMPLE_PROJECT

    log = get_logger(__name__)
    path = rt.stack.project_file or EXAMPLE_PROJECT
    definition = None if path is None else Definition.from_file(path)
    book = await read_book(rt.stack)
    if definition is None or book.plan(definition).unchanged:  # the usual start: nothing to write
        rt.projects.projects.update((a.name, a) for a in book.values())
        return
    async with project_lock(rt.stack, definition.name, retry=True):  # six services may start at once
        book = await read_book(rt.stack)
        rt.projects.projects.update((a.name, a) for a in book.values())
        current = book.get(definition.name)
        p = book.plan(definition)
        if p.unchanged:
            return
        if current is not None and not current.applied_by.startswith(SERVICE_APPLIED):
            log.warning(
                "project_file_not_applied",
                project=definition.name,
                file=str(path),
                version=current.version,
                applied_by=current.applied_by,
                reason="the topic's version was applied by hand and the file differs; a start does not overwrite it",
            )
            return
        if p.refused:
            log.error("project_file_refused", project=definition.name, file=str(path), problems=p.refused)
            return
        record = applied_record(definition, p, producer=rt.service, applied_by=f"{SERVICE_APPLIED}{rt.service}")
        await rt.serde.prepare(PROJECTS)
        await rt.producer.publish(PROJECTS, record)
    rt.projects.take(record)
    log.info("project_applied", project=definition.name, version=p.version, file=str(path), changes=p.changes)
