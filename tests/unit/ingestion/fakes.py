"""Ingestion's unit-test helpers: loan events, and the service's app in process around a
:class:`tests.fakes.FakeProducer`."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import FastAPI

from driftline.api import create_app
from driftline.auth import TokenAuth
from driftline.project import load_project
from driftline.validation import Validator
from driftline_ingestion.api import IngestionDeps, document_request_bodies
from driftline_ingestion.config import IngestionSettings
from driftline_ingestion.handlers import IngestHandler
from driftline_ingestion.service import SERVICE
from driftline_ingestion.store import IdempotencyKeys
from tests.fakes import FakeProducer

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


def in_process_app(producer: FakeProducer, settings: IngestionSettings, *, tokens: list[str], max_keys: int) -> FastAPI:
    """The app the service serves (routes, documented request bodies), its deps wired by hand around
    a fake producer instead of the runtime."""
    validator = Validator.from_project(load_project())
    app = create_app(SERVICE.name, title=SERVICE.title, description=SERVICE.description)
    for router in SERVICE.routers:
        app.include_router(router)
    document_request_bodies(app, validator)
    handler = IngestHandler(producer, validator, IdempotencyKeys(60, max_keys), max_batch=settings.max_batch)
    app.state.deps = IngestionDeps(handler, TokenAuth(tokens), settings)
    return app
