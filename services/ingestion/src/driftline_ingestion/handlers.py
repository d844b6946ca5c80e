"""Ingestion's logic: validate, de-duplicate, produce with a bound on what is in flight, answer.

A request is answered only when Kafka acknowledged every record it accepted (acks=all), so a 2xx
means stored. Refused records go to ``events.dlq`` with the reason and the original bytes. When
more than ``max_in_flight`` records, or more than ``max_in_flight_bytes`` bytes of them, wait for
the broker, a request is answered 503 with ``Retry-After`` before anything of it is sent (no
unbounded buffer: memory is bounded whatever the records' size); when the broker does not
acknowledge in ``ack_timeout_s``, the answer is 503 too and the client retries with the same ids,
which the idempotency keys recognise.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

from prometheus_client import Counter, Gauge, Histogram

from driftline.logging import get_logger
from driftline.validation import (
    BATCH_TOO_LARGE,
    BODY_TOO_LARGE,
    EVENT_ID_CONFLICT,
    Kind,
    Problem,
    Rejection,
    Valid,
    Validator,
    original_bytes,
    parse_body,
    with_original_bytes,
)
from driftline_ingestion.store import IdempotencyKeys, Seen
from driftline_sdk import dead_letter

log = get_logger(__name__)

ACCEPTED = Counter("driftline_ingestion_accepted_total", "Records accepted and acknowledged by Kafka", ["kind"])
DUPLICATES = Counter(
    "driftline_ingestion_duplicates_total", "Retried records recognised and not produced again", ["kind"]
)
REJECTED = Counter("driftline_ingestion_rejected_total", "Records refused", ["kind", "error_type"])
DEAD_LETTERED = Counter("driftline_ingestion_dead_lettered_total", "Refused records written to events.dlq", ["kind"])
FAILED = Counter("driftline_ingestion_failed_total", "Records Kafka did not acknowledge in time (503)", ["kind"])
OVERLOADED = Counter(
    "driftline_ingestion_overloaded_total", "Requests answered 503 because too much was in flight", ["kind"]
)
IN_FLIGHT = Gauge("driftline_ingestion_in_flight_records", "Records sent to Kafka and not yet acknowledged")
IN_FLIGHT_BYTES = Gauge(
    "driftline_ingestion_in_flight_bytes", "Request bytes of the records sent to Kafka and not yet acknowledged"
)
LATENCY = Histogram(
    "driftline_ingestion_request_seconds",
    "From a request's arrival to its answer (after the broker's acknowledgement)",
    ["kind"],
    buckets=(0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


class Producer(Protocol):
    """What ingestion needs of :class:`driftline.producer.EventProducer` (unit tests pass a fake)."""

    name: str

    async def send(self, topic: str, record: dict[str, Any], *, key: bytes | None = None) -> asyncio.Future[Any]: ...

    async def dead_letter(
        self, *, source: str, reason: str, error_type: str, original: bytes, correlation_id: str | None = None
    ) -> asyncio.Future[Any]: ...


@dataclass
class Reply:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


def nothing_stored(
    status: int,
    error: str,
    message: str,
    *,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    """An answer for a request of which nothing was stored, in the shape of every answer."""
    body: dict[str, Any] = {
        "accepted": 0,
        "duplicates": 0,
        "rejected": 0,
        "dead_lettered": 0,
        "failed": 0,
        "results": [],
        "errors": errors or [],
        "error": error,
        "message": message,
    }
    return Reply(status, body, headers or {})


class InFlight:
    """Counts records sent and not yet acknowledged, and their bytes; refuses to go over either limit.

    A record's bytes are its share of the request body (a refused record: its own bytes, which the
    DLQ record carries), so the bound holds the memory of what waits, whatever the records' size.
    """

    def __init__(self, limit: int, limit_bytes: int = 64 * 1024 * 1024) -> None:
        self.limit = limit
        self.limit_bytes = limit_bytes
        self.count = 0
        self.bytes = 0

    def try_acquire(self, n: int, nbytes: int = 0) -> bool:
        if self.count + n > self.limit or (self.bytes + nbytes > self.limit_bytes and self.bytes > 0):
            return False  # (a request alone over the byte limit still goes when nothing else waits)
        self.count += n
        self.bytes += nbytes
        IN_FLIGHT.set(self.count)
        IN_FLIGHT_BYTES.set(self.bytes)
        return True

    def release(self, n: int = 1, nbytes: int = 0) -> None:
        self.count -= n
        self.bytes -= nbytes
        IN_FLIGHT.set(self.count)
        IN_FLIGHT_BYTES.set(self.bytes)


class IngestHandler:
    def __init__(
        self,
        producer: Producer,
        validator: Validator,
        keys: IdempotencyKeys,
        *,
        max_batch: int = 1000,
        max_in_flight: int = 20_000,
        max_in_flight_bytes: int = 64 * 1024 * 1024,
        ack_timeout_s: float = 30.0,
        retry_after_s: int = 1,
    ) -> None:
        self.producer = producer
        self.validator = validator
        self.keys = keys
        self.max_batch = max_batch
        self.in_flight = InFlight(max_in_flight, max_in_flight_bytes)
        self.ack_timeout_s = ack_timeout_s
        self.retry_after_s = retry_after_s

    async def ingest(self, kind: Kind, body: bytes, *, source: str = "http") -> Reply:
        """Handle one request body of ``POST /v1/<kind>``."""
        started = time.perf_counter()
        try:
            parsed = parse_body(body, kind, max_batch=self.max_batch)
            if isinstance(parsed, Rejection):
                status = 413 if parsed.error_type == BATCH_TOO_LARGE else 400
                return await self.refuse(kind, parsed, status)
            return await self._ingest_items(kind, parsed, source, body)
        finally:
            LATENCY.labels(kind).observe(time.perf_counter() - started)

    async def refuse(self, kind: Kind, rejection: Rejection, status: int) -> Reply:
        """A request refused as a whole (not JSON, too large…): one DLQ record with the body, then 4xx."""
        weight = len(rejection.original)
        if not self.in_flight.try_acquire(1, weight):
            return self._overloaded(kind)
        REJECTED.labels(kind, rejection.error_type).inc()
        log.info("request_refused", kind=kind, error_type=rejection.error_type, reason=rejection.reason[:300])
        dead_lettered = 0
        fut: asyncio.Future[Any] | None = None
        try:
            async with asyncio.timeout(self.ack_timeout_s):
                fut = await dead_letter(self.producer, rejection, f"http:/v1/{kind}")
                fut.add_done_callback(partial(self._dlq_settled, weight))
                await asyncio.wait([fut])
        except Exception as exc:  # the refusal stands even when the DLQ cannot be written
            log.error("dead_letter_failed", kind=kind, error=repr(exc)[:300])
        finally:
            if fut is None:
                self.in_flight.release(1, weight)
        if fut is not None and fut.done() and not fut.cancelled() and fut.exception() is None:
            dead_lettered = 1
            DEAD_LETTERED.labels(kind).inc()
        reply = nothing_stored(status, rejection.error_type, rejection.reason, errors=rejection.errors())
        reply.body |= {"rejected": 1, "dead_lettered": dead_lettered}
        return reply

    def _overloaded(self, kind: Kind) -> Reply:
        OVERLOADED.labels(kind).inc()
        return nothing_stored(
            503,
            "overloaded",
            f"more than {self.in_flight.limit} records or {self.in_flight.limit_bytes} bytes are waiting for "
            f"Kafka; retry after {self.retry_after_s}s with the same event ids",
            headers={"Retry-After": str(self.retry_after_s)},
        )

    async def _ingest_items(self, kind: Kind, items: list[Any], source: str, body: bytes) -> Reply:
        valid, rejected = self.validator.validate(kind, items, producer=self.producer.name, source=source)

        # Which ids were accepted before (or earlier in this request), and which are new.
        fresh: list[tuple[Valid, bytes]] = []
        repeats: list[tuple[Valid, Seen | None]] = []
        first_in_request: dict[tuple[str, str], bytes] = {}
        for v in valid:
            fp = v.fingerprint()
            key = (v.topic, v.event_id)
            seen = self.keys.get(*key)
            earlier = seen.fingerprint if seen is not None else first_in_request.get(key)
            if earlier is None:
                first_in_request[key] = fp
                fresh.append((v, fp))
            elif earlier != fp:
                reason = "this event_id was already accepted with different content; use a new id"
                rejected.append(
                    Rejection(
                        v.index,
                        [Problem("event_id", EVENT_ID_CONFLICT, reason)],
                        original_bytes(items[v.index]),
                        v.event_id,
                        v.record.get("correlation_id"),
                    )
                )
            else:
                repeats.append((v, seen))
        rejected.sort(key=lambda r: r.index or 0)
        if rejected:  # the DLQ keeps each refused item's own bytes (the error path alone pays for it)
            with_original_bytes(body, kind, rejected)

        # Bytes held until acknowledged: a record's share of the body; a refused one, its own bytes.
        share = max(1, len(body) // max(1, len(items)))
        rejected_bytes = [len(r.original) for r in rejected]
        if not self.in_flight.try_acquire(len(fresh) + len(rejected), share * len(fresh) + sum(rejected_bytes)):
            return self._overloaded(kind)
        loop = asyncio.get_running_loop()
        entries = [self.keys.reserve(v.topic, v.event_id, fp, loop.create_future()) for v, fp in fresh]
        repeats = [(v, seen or self.keys.get(v.topic, v.event_id)) for v, seen in repeats]
        dlq_futures: list[asyncio.Future[Any]] = []
        sent = 0
        where = f"http:/v1/{kind}"
        try:
            async with asyncio.timeout(self.ack_timeout_s):
                try:
                    for (v, _), entry in zip(fresh, entries, strict=True):
                        kfut = await self.producer.send(v.topic, v.record, key=v.key)
                        kfut.add_done_callback(partial(self._settled, entry, share))
                        sent += 1
                    for r, weight in zip(rejected, rejected_bytes, strict=True):
                        dfut = await dead_letter(self.producer, r, where)
                        dfut.add_done_callback(partial(self._dlq_settled, weight))
                        dlq_futures.append(dfut)
                except Exception as exc:  # the producer refused to enqueue (stopping, metadata timeout)
                    log.error("produce_failed", kind=kind, error=repr(exc)[:300])
                waits = [e.acked for e in entries[:sent]]
                waits += [seen.acked for _, seen in repeats if seen is not None]
                waits += dlq_futures
                for fut in waits:  # in order: records of one producer batch complete together
                    if not fut.done():
                        await asyncio.wait([fut])
        except TimeoutError:
            log.warning("ack_timeout", kind=kind, timeout_s=self.ack_timeout_s)
        finally:
            # What was never handed to the producer: free its slot and its id (a retry sends it).
            for entry in entries[sent:]:
                self.keys.forget(entry)
                if not entry.acked.done():
                    entry.acked.set_result(False)
            self.in_flight.release(
                len(entries) - sent + len(rejected) - len(dlq_futures),
                share * (len(entries) - sent) + sum(rejected_bytes[len(dlq_futures) :]),
            )

        return self._answer(kind, valid, rejected, fresh, entries, repeats, dlq_futures)

    def _answer(
        self,
        kind: Kind,
        valid: list[Valid],
        rejected: list[Rejection],
        fresh: list[tuple[Valid, bytes]],
        entries: list[Seen],
        repeats: list[tuple[Valid, Seen | None]],
        dlq_futures: list[asyncio.Future[Any]],
    ) -> Reply:
        results: list[dict[str, Any]] = []
        accepted = duplicates = failed = 0
        for (v, _), entry in zip(fresh, entries, strict=True):
            ok = entry.acked.done() and entry.acked.result()
            accepted += ok
            failed += not ok
            results.append({"index": v.index, "status": "accepted" if ok else "failed", "event_id": v.event_id})
        for v, seen in repeats:
            ok = seen is not None and seen.acked.done() and seen.acked.result()
            duplicates += ok
            failed += not ok
            results.append({"index": v.index, "status": "duplicate" if ok else "failed", "event_id": v.event_id})
        for r in rejected:
            results.append({"index": r.index, "status": "rejected", "event_id": r.event_id})
            REJECTED.labels(kind, r.error_type).inc()
        dead_lettered = sum(1 for f in dlq_futures if f.done() and not f.cancelled() and f.exception() is None)
        results.sort(key=lambda r: r["index"])
        ACCEPTED.labels(kind).inc(accepted)
        DUPLICATES.labels(kind).inc(duplicates)
        DEAD_LETTERED.labels(kind).inc(dead_lettered)
        FAILED.labels(kind).inc(failed)
        body: dict[str, Any] = {
            "accepted": accepted,
            "duplicates": duplicates,
            "rejected": len(rejected),
            "dead_lettered": dead_lettered,
            "failed": failed,
            "results": results,
            "errors": [e for r in rejected for e in r.errors()],
        }
        if failed:
            body |= {
                "error": "not_acknowledged",
                "message": f"Kafka did not acknowledge {failed} record(s) in time; retry the request with the same "
                "event ids (records already stored are recognised as duplicates)",
            }
            return Reply(503, body, {"Retry-After": str(self.retry_after_s)})
        if not rejected:
            return Reply(200, body)
        if rejected:
            log.info("records_refused", kind=kind, rejected=len(rejected), first=rejected[0].reason[:300])
        if accepted or duplicates:
            return Reply(207, body)
        body |= {"error": rejected[0].error_type, "message": rejected[0].reason}
        return Reply(422, body)

    def _settled(self, entry: Seen, nbytes: int, kfut: asyncio.Future[Any]) -> None:
        self.in_flight.release(1, nbytes)
        error = None if kfut.cancelled() else kfut.exception()
        ok = not kfut.cancelled() and error is None
        if not ok:
            self.keys.forget(entry)
            log.error("record_not_acknowledged", event_id=entry.key[1], error=repr(error)[:300])
        if not entry.acked.done():
            entry.acked.set_result(ok)

    def _dlq_settled(self, nbytes: int, fut: asyncio.Future[Any]) -> None:
        self.in_flight.release(1, nbytes)
        if not fut.cancelled() and fut.exception() is not None:
            log.error("dead_letter_not_acknowledged", error=repr(fut.exception())[:300])


def body_too_large(data_prefix: bytes, limit: int, declared: int | None) -> Rejection:
    size = f"{declared} bytes" if declared is not None else "more"
    reason = f"request body is {size}; the limit is {limit} bytes (the DLQ keeps its first {len(data_prefix)} bytes)"
    return Rejection(None, [Problem(None, BODY_TOO_LARGE, reason)], data_prefix)
