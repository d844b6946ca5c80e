"""Fakes for ingestion's unit tests: a producer that checks records against their topic's schema."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from fastavro.validation import validate

from driftline.catalog import default_catalog, parsed_schema

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
