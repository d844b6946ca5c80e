"""Publishing the predictions served over HTTP without a broker round trip in the request.

``POST /v1/predict`` hands its ``PredictionMade`` records to :meth:`PredictionPublisher.submit`,
which encodes and enqueues them in the producer's batch (aiokafka's ``send``: no round trip, it
waits only when the producer's buffer is full) and returns; the answer does not wait for the
broker. Delivery is tracked: each record is kept until the broker acknowledged it (acks=all,
idempotent producer); a failed delivery is sent again, with backoff, until it succeeds. On
shutdown the service waits (up to ``drain_timeout_s``) for every record still pending.

What can be lost: records still unacknowledged when the process is killed (SIGKILL, a crash), at
most the last ``linger`` and request timeout's worth; and records refused because more than
``max_pending`` are waiting (the broker is down for long): counted in
``driftline_deployment_http_predictions_unpublished_total`` and logged, never silently.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Protocol

from driftline.catalog import PREDICTIONS
from driftline.logging import get_logger
from driftline.records import PredictionMade
from driftline.retry import Backoff
from driftline_deployment.metrics import HTTP_PUBLISH_PENDING, HTTP_PUBLISHED, HTTP_REPUBLISHED, HTTP_UNPUBLISHED

log = get_logger(__name__)


class Sender(Protocol):
    async def send(self, topic: str, record: PredictionMade, *, key: bytes | None = None) -> asyncio.Future[Any]: ...


class PredictionPublisher:
    """Fire-and-forget publishing of HTTP predictions, with delivery tracked (see the module doc)."""

    def __init__(self, producer: Sender, *, max_pending: int = 100_000, drain_timeout_s: float = 30.0) -> None:
        self.producer = producer
        self.max_pending = max_pending
        self.drain_timeout_s = drain_timeout_s
        self._pending: dict[asyncio.Future[Any], PredictionMade] = {}
        self._retry: asyncio.Queue[PredictionMade] = asyncio.Queue()
        self._retrier: asyncio.Task[None] | None = None

    @property
    def pending(self) -> int:
        """Records not acknowledged yet (in the producer's buffer or waiting for a resend)."""
        return len(self._pending) + self._retry.qsize()

    async def submit(self, records: Sequence[PredictionMade]) -> None:
        """Enqueue ``records`` for publishing and return (an encoding error raises: a bug)."""
        room = self.max_pending - self.pending
        if room < len(records):
            HTTP_UNPUBLISHED.inc(len(records) - max(room, 0))
            log.error("http_predictions_unpublished", count=len(records) - max(room, 0), pending=self.pending)
            records = records[: max(room, 0)]
        for record in records:
            await self._send(record)
        HTTP_PUBLISH_PENDING.set(self.pending)

    async def _send(self, record: PredictionMade) -> None:
        fut = await self.producer.send(PREDICTIONS, record)
        self._pending[fut] = record
        fut.add_done_callback(self._settled)

    def _settled(self, fut: asyncio.Future[Any]) -> None:
        record = self._pending.pop(fut, None)
        if record is None:
            return
        if fut.cancelled() or fut.exception() is not None:
            error = "cancelled" if fut.cancelled() else repr(fut.exception())[:300]
            log.warning("http_prediction_delivery_failed", event_id=record.event_id, error=error)
            HTTP_REPUBLISHED.inc()
            self._retry.put_nowait(record)
            self._ensure_retrier()
        else:
            HTTP_PUBLISHED.inc()
        HTTP_PUBLISH_PENDING.set(self.pending)

    def _ensure_retrier(self) -> None:
        if self._retrier is None or self._retrier.done():
            self._retrier = asyncio.get_running_loop().create_task(self._resend())

    async def _resend(self) -> None:
        backoff = Backoff()
        while not self._retry.empty():
            await asyncio.sleep(backoff.next_delay())
            record = self._retry.get_nowait()
            try:
                await self._send(record)
            except Exception as exc:  # the producer refused it now (stopped, buffer timeout): later
                log.warning("http_prediction_resend_failed", event_id=record.event_id, error=repr(exc)[:300])
                self._retry.put_nowait(record)

    async def drain(self) -> None:
        """Wait until every submitted record was acknowledged (or ``drain_timeout_s`` passed)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.drain_timeout_s
        while self.pending and loop.time() < deadline:
            if self._pending:
                await asyncio.wait(list(self._pending), timeout=max(0.0, deadline - loop.time()))
            else:
                await asyncio.sleep(0.05)
        if self.pending:
            HTTP_UNPUBLISHED.inc(self.pending)
            log.error("http_predictions_unpublished_at_stop", count=self.pending)
        if self._retrier is not None:
            self._retrier.cancel()
