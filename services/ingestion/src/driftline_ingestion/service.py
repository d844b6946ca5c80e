"""The ingestion service: what it produces and serves, and the one place that wires it.

It consumes nothing: its input is HTTP. Its only state is the idempotency keys, in memory.
"""

from __future__ import annotations

from driftline.auth import TokenAuth
from driftline.catalog import EVENTS_DLQ, EVENTS_RAW, LABELS
from driftline.logging import get_logger
from driftline.project import project_from_settings
from driftline.projects import Applied, ProjectBook
from driftline.runtime import Runtime
from driftline.service import Service, Wiring
from driftline.validation import Validator
from driftline_ingestion.api import DESCRIPTION, IngestionDeps, document_request_bodies, router
from driftline_ingestion.config import IngestionSettings
from driftline_ingestion.handlers import IngestHandler
from driftline_ingestion.store import IdempotencyKeys

log = get_logger(__name__)


def project_validator(settings: IngestionSettings) -> Validator:
    """The validation of the configured project's event types and label classes (the OpenAPI
    document's request bodies; requests are validated against every project, see :func:`wire`)."""
    return Validator.from_project(project_from_settings(settings.stack))


def book_validator(book: ProjectBook) -> Validator:
    """The validation of every project on the projects topic: an event routes by its type."""
    return Validator.merged([a.definition.validator() for a in book.values()])


async def wire(rt: Runtime, settings: IngestionSettings) -> Wiring[IngestionDeps]:
    validator = book_validator(rt.projects)
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

    def projects_changed(name: str, state: Applied | None) -> None:
        handler.validator = book_validator(rt.projects)
        log.info(
            "ingestion_projects_changed",
            project=name,
            version=state.version if state else None,
            event_types=sorted(handler.validator.event_types),
        )

    rt.projects.listeners.append(projects_changed)
    log.info(
        "ingestion_started",
        port=settings.port,
        event_types=sorted(validator.event_types),
        topic_prefix=settings.stack.topic_prefix,
        max_batch=settings.max_batch,
        max_in_flight=settings.max_in_flight,
        max_in_flight_bytes=settings.max_in_flight_bytes,
    )
    return Wiring(deps=IngestionDeps(handler, TokenAuth.from_settings(settings.stack, rt.service), settings))


SERVICE: Service[IngestionSettings, IngestionDeps] = Service(
    name="ingestion",
    title="Driftline ingestion",
    description=DESCRIPTION,
    wire=wire,
    produces=(EVENTS_RAW, LABELS, EVENTS_DLQ),
    routers=[router],
    producer_options=lambda s: {"linger_ms": s.linger_ms, "max_batch_size": s.producer_batch_bytes},
    # The project's record shapes in the OpenAPI document (the routers are fixed at import).
    customize=lambda app, s: document_request_bodies(app, project_validator(s)),
)
