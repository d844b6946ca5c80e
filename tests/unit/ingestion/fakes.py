"""Fakes for ingestion's unit tests: a producer that checks records against their topic's schema, and
the service's app in process with it."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from fastapi import FastAPI
from fastavro.validation import validate

from driftline.api import create_app
from driftline.auth import TokenAuth
from driftline.catalog import default_catalog, parsed_schema
from driftline.project import load_project
from driftline.validation import Validator
from driftline_ingestion.api import IngestionDeps, document_request_bodies
from driftline_ingestion.config import IngestionSettings
from driftline_ingestion.handlers import IngestHandler
from driftline_ingestion.service import SERVICE
from driftline_ingestion.store import IdempotencyKeys

LOAN = {
    "customer_id": "c-1",
    "salary": 52000.0,
    "commission": 0.0,
    "age": 41,
    "elevel": 2,
    "car": 7,
    "zipcode": 3,
    "hvalue": 150000.0,
    "hyears": 12,
    "loan": 20000.0,
}


def loan_event(**payload: Any) -> dict[str, Any]:
    """A valid loan_application event with a fresh id (payload fields overridable)."""
    return {"type": "loan_application", "event_id": str(uuid.uuid4()), "payload": {**LOAN, **payload}}


class FakeProducer:
    """Records what would be produced; acks at once unless told to hold or fail."""

    name = "ingestion"

    def __init__(self, *, hold: bool = False, fail: bool = False) -> None:
        self.hold = hold
        self.fail = fail
        self.sent: list[tuple[str, dict[str, Any], bytes | None]] = []
        self.dead: list[dict[str, Any]] = []
        self.pending: list[asyncio.Future[Any]] = []
        self._changed = asyncio.Event()

    def _future(self) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.fail:
            fut.set_exception(ConnectionError("broker down"))
        elif self.hold:
            self.pending.append(fut)
            self._changed.set()
        else:
            fut.set_result(None)
        return fut

    async def send(self, topic: str, record: dict[str, Any], *, key: bytes | None = None) -> asyncio.Future[Any]:
        schema = parsed_schema(default_catalog()[topic].record)
        validate(record, schema)  # raises when the record would not encode
        self.sent.append((topic, record, key))
        return self._future()

    async def dead_letter(
        self, *, source: str, reason: str, error_type: str, original: bytes, correlation_id: str | None = None
    ) -> asyncio.Future[Any]:
        self.dead.append(
            {
                "source": source,
                "reason": reason,
                "error_type": error_type,
                "original": original,
                "correlation_id": correlation_id,
            }
        )
        return self._future()

    async def wait_pending(self, n: int) -> None:
        """Until ``n`` sends wait for their acknowledgement."""
        while len(self.pending) < n:
            self._changed.clear()
            await self._changed.wait()

    def release(self, ok: bool = True) -> None:
        for fut in self.pending:
            if not fut.done():
                if ok:
                    fut.set_result(None)
                else:
                    fut.set_exception(ConnectionError("broker down"))
        self.pending.clear()


def in_process_app(producer: FakeProducer, settings: IngestionSettings, *, tokens: list[str], max_keys: int) -> FastAPI:
    """The app ``build_app`` serves (routes, documented request bodies), its deps wired by hand around
    a fake producer instead of the runtime."""
    validator = Validator.from_project(load_project())
    app = create_app(SERVICE.name, title=SERVICE.title, description=SERVICE.description)
    for router in SERVICE.routers:
        app.include_router(router)
    document_request_bodies(app, validator)
    handler = IngestHandler(producer, validator, IdempotencyKeys(60, max_keys), max_batch=settings.max_batch)
    app.state.deps = IngestionDeps(handler, TokenAuth(tokens), settings)
    return app
