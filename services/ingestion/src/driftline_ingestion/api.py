"""HTTP API of ingestion: POST /v1/events, POST /v1/labels (bearer token), GET /v1/schemas.

The OpenAPI document is at /openapi.json and rendered at /docs; the shapes of the records it
documents come from the project file (:func:`document_request_bodies`).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Response

from driftline.service import wired
from driftline.validation import Kind, Validator
from driftline_ingestion.config import IngestionSettings
from driftline_ingestion.handlers import IngestHandler, Reply, body_too_large, nothing_stored
from driftline_sdk import SOURCE_HEADER

DLQ_PREFIX_BYTES = 64 * 1024  # what the DLQ keeps of a body over the limit
_SOURCE = re.compile(r"^[a-z][a-z0-9_.-]{0,31}$")

DESCRIPTION = """
Publish events and ground-truth labels to Driftline.

* Send one record or a batch (`{"events": [...]}`, `{"labels": [...]}` or a bare array).
* A 2xx answer means Kafka acknowledged every accepted record (acks=all).
* Give every event an `event_id` (UUID) to make retries safe: a retried id is answered `duplicate`.
* Refused records are reported by index with the field and the reason, and kept in `events.dlq`.
* Status: 200 all stored; 207 some stored, some refused; 422 all refused; 400 not JSON / bad shape;
  413 too large; 401/403 token; 503 + `Retry-After` overloaded or not acknowledged in time.
"""

_RESULT = {
    "type": "object",
    "properties": {
        "accepted": {"type": "integer"},
        "duplicates": {"type": "integer"},
        "rejected": {"type": "integer"},
        "dead_lettered": {"type": "integer"},
        "failed": {"type": "integer"},
        "results": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "index": {"type": "integer"},
                    "status": {"enum": ["accepted", "duplicate", "rejected", "failed"]},
                    "event_id": {"type": ["string", "null"]},
                },
            },
        },
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "index": {"type": ["integer", "null"]},
                    "field": {"type": ["string", "null"]},
                    "error_type": {"type": "string"},
                    "reason": {"type": "string"},
                },
            },
        },
        "error": {"type": "string", "description": "Present on 4xx/5xx: the error class."},
        "message": {"type": "string"},
    },
}


def _responses() -> dict[int | str, dict[str, Any]]:
    content = {"application/json": {"schema": _RESULT}}
    return {
        200: {"description": "Every record stored (or recognised as a duplicate)", "content": content},
        207: {"description": "Some records stored, some refused (see errors)", "content": content},
        400: {"description": "Body is not JSON or not an event/batch", "content": content},
        401: {"description": "No bearer token", "content": content},
        403: {"description": "Token not accepted", "content": content},
        413: {"description": "Body or batch over the limit", "content": content},
        422: {"description": "Every record refused (see errors)", "content": content},
        503: {"description": "Overloaded or not acknowledged in time: retry after Retry-After", "content": content},
    }


def _request_body(kind: Kind, validator: Validator) -> dict[str, Any]:
    if kind == "events":
        item: dict[str, Any] = {
            "oneOf": [
                {
                    "type": "object",
                    "title": t.name,
                    "required": ["type", "payload"],
                    "properties": {
                        "type": {"const": t.name},
                        "event_id": {"type": "string", "format": "uuid"},
                        "event_time": {"type": "string", "format": "date-time"},
                        "correlation_id": {"type": "string"},
                        "payload": t.schema.json_schema(),
                    },
                    "additionalProperties": False,
                }
                for t in validator.event_types.values()
            ]
        }
    else:
        item = {
            "type": "object",
            "required": ["entity_id", "label"],
            "properties": {
                "event_id": {"type": "string", "format": "uuid", "description": "the labelled event"},
                "prediction_id": {
                    "type": "string",
                    "format": "uuid",
                    "description": "instead of event_id: the prediction_id deployment's POST /v1/predict answered",
                },
                "entity_id": {"type": "string"},
                "label": {"enum": validator.label_classes},
                "label_id": {"type": "string", "format": "uuid"},
                "event_time": {"type": "string", "format": "date-time"},
                "correlation_id": {"type": "string"},
                "project": {
                    "enum": sorted(validator.classes_by_project) or [None],
                    "description": "the labelled event's project: the label must be one of its classes",
                },
            },
            "additionalProperties": False,
        }
    schema = {
        "oneOf": [
            item,
            {"type": "object", "properties": {kind: {"type": "array", "items": item}}, "required": [kind]},
            {"type": "array", "items": item},
        ]
    }
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


async def read_body(request: Request, limit: int) -> tuple[bytes, bool, int | None]:
    """The body, or its first bytes when it is over ``limit`` (memory stays bounded either way)."""
    declared_text = request.headers.get("content-length", "")
    declared = int(declared_text) if declared_text.isdigit() else None
    too_large = declared is not None and declared > limit
    drain_limit = 8 * limit  # read (and drop) this much of an oversize body so the client sees the 413
    buf = bytearray()
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if not too_large and total > limit:
            too_large = True
            del buf[DLQ_PREFIX_BYTES:]
        if too_large:
            if len(buf) < DLQ_PREFIX_BYTES:
                buf += chunk[: DLQ_PREFIX_BYTES - len(buf)]
            if total > drain_limit:
                break
        else:
            buf += chunk
    return bytes(buf), too_large, declared if declared is not None else (total if too_large else None)


@dataclass(frozen=True)
class IngestionDeps:
    """What the routes reach through ``Depends(wired)``."""

    handler: IngestHandler
    auth: Callable[[Request], Awaitable[str]]
    """The bearer-token check: the actor, or HTTPException 401/403 (a :class:`~driftline.auth.TokenAuth`)."""
    settings: IngestionSettings


Deps = Annotated[IngestionDeps, Depends(wired)]
PUBLISH: dict[str, Kind] = {"/v1/events": "events", "/v1/labels": "labels"}
router = APIRouter(tags=["publish"])


async def token_refused(request: Request, deps: IngestionDeps) -> Reply | None:
    """No token or a wrong one (401/403), answered in the shape of every ingestion answer (not
    FastAPI's ``detail``); None when the token is accepted."""
    try:
        await deps.auth(request)
    except HTTPException as exc:
        detail: dict[str, Any] = exc.detail if isinstance(exc.detail, dict) else {}
        error = str(detail.get("error") or ("unauthorized" if exc.status_code == 401 else "forbidden"))
        message = str(detail.get("reason") or exc.detail)
        problem = {"index": None, "field": None, "error_type": error, "reason": message}
        return nothing_stored(exc.status_code, error, message, errors=[problem], headers=dict(exc.headers or {}))
    return None


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, headers=headers, media_type="application/json")


async def _publish(request: Request, deps: IngestionDeps, kind: Kind) -> Response:
    reply = await token_refused(request, deps)  # before the body is read
    if reply is None:
        limit = deps.settings.max_body_bytes
        body, too_large, size = await read_body(request, limit)
        if too_large:
            reply = await deps.handler.refuse(kind, body_too_large(body, limit, size), 413)
        else:
            source = request.headers.get(SOURCE_HEADER, "http")
            reply = await deps.handler.ingest(kind, body, source=source if _SOURCE.match(source) else "http")
    return _json(reply.status, reply.body, reply.headers)


@router.post("/v1/events", summary="Publish one event or a batch", responses=_responses())
async def post_events(request: Request, deps: Deps) -> Response:
    return await _publish(request, deps, "events")


@router.post("/v1/labels", summary="Publish one ground-truth label or a batch", responses=_responses())
async def post_labels(request: Request, deps: Deps) -> Response:
    return await _publish(request, deps, "labels")


@router.get("/v1/schemas", summary="What can be sent: event types, their fields, label classes")
async def get_schemas(deps: Deps) -> Response:
    settings = deps.settings
    limits = {
        "max_batch": settings.max_batch,
        "max_body_bytes": settings.max_body_bytes,
        "dedupe_horizon_s": settings.dedupe_horizon_s,
    }
    return _json(200, {**deps.handler.validator.describe(), "limits": limits})


def document_request_bodies(app: FastAPI, validator: Validator) -> None:
    """Put the request bodies of the project's event types and label classes in the app's OpenAPI
    document (FastAPI's "extending OpenAPI"): the routes are declared before any project is read."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            for path, kind in PUBLISH.items():
                schema["paths"][path]["post"].update(_request_body(kind, validator))
        return app.openapi_schema or {}

    app.openapi = openapi  # type: ignore[method-assign]
