"""The ``projects`` topic read and written (the CLI, and a service applying its
``DRIFTLINE_PROJECT_FILE`` at start); the planning and the book are :mod:`driftline.projects`."""

from __future__ import annotations

import asyncio
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


async def read_book(stack: StackSettings) -> ProjectBook:
    """The projects on the topic now (read from its beginning to its end)."""
    from driftline.history import read_topics

    events = await read_topics(stack, [PROJECTS])
    return book_of(e.record for e in events)


async def _publish(stack: StackSettings, producer_name: str, record: ProjectApplied, *, tombstone: bool) -> None:
    from driftline.producer import EventProducer
    from driftline.serde import AvroSerde, SchemaRegistryClient

    registry = SchemaRegistryClient(stack.schema_registry_url)
    producer = EventProducer(
        stack.kafka_bootstrap_servers, AvroSerde(registry, topic_prefix=stack.topic_prefix), producer_name
    )
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
    unchanged or a ``dry_run``. Two applies of one project at the same moment are not serialised:
    the later record on the topic wins."""
    book = await read_book(stack)
    p = book.plan(definition)
    if p.refused:
        raise ProjectRefused(definition.name, p.refused)
    if not p.unchanged and not dry_run:
        await _publish(
            stack, producer, applied_record(definition, p, producer=producer, applied_by=applied_by), tombstone=False
        )
    return p


async def delete_project(stack: StackSettings, name: str, *, applied_by: str, producer: str = "cli") -> Applied:
    """Publish the deletion of a project and a tombstone for its key; KeyError when there is none."""
    book = await read_book(stack)
    current = book.get(name)
    if current is None:
        raise KeyError(name)
    await _publish(stack, producer, deleted_record(current, producer=producer, applied_by=applied_by), tombstone=True)
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
    book = await read_book(rt.stack)
    for record_state in book.values():
        rt.projects.projects[record_state.name] = record_state
    path = rt.stack.project_file or EXAMPLE_PROJECT
    if path is None:
        return
    definition = Definition.from_file(path)
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
