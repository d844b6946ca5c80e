"""The Python SDK: publish events and labels to Driftline, over HTTP or straight to Kafka.

Over HTTP (through the ingestion service; needs an API token)::

    async with Publisher.http("http://127.0.0.1:38101", token="...") as pub:
        result = await pub.publish([{"type": "loan_application", "payload": {...}}])
        await pub.publish_labels([{"event_id": result.event_ids[0], "entity_id": "c1", "label": "approve"}])

Straight to Kafka (same validation as the service, for trusted producers inside the platform)::

    async with Publisher.kafka(StackSettings()) as pub:
        result = await pub.publish(events)

Either way an event without an ``event_id`` gets one before the first attempt, so a retry (after a
503, a timeout, a dropped connection) carries the same ids and the service or the downstream sinks
recognise it. Refused records are reported by index in ``result.errors`` and are written to
``events.dlq``. ``result.accepted`` counts only records Kafka acknowledged (acks=all).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypedDict, Unpack

import httpx
import orjson
from aiokafka.errors import KafkaError

from driftline.catalog import EVENTS_RAW, LABELS
from driftline.producer import EventProducer
from driftline.project import Project, project_from_settings
from driftline.serde import AvroSerde, RegistryError, SchemaRegistryClient
from driftline.settings import LOCAL_API_TOKEN, StackSettings
from driftline.validation import (
    MALFORMED_JSON,
    Kind,
    Problem,
    Rejection,
    Validator,
    with_event_id,
)

DEFAULT_URL = "http://127.0.0.1:38101"
SOURCE_HEADER = "X-Driftline-Source"
Progress = Callable[[int], None]


class PublishError(Exception):
    """A request the service refused as a whole (auth, limits) or could not be reached after retries.

    Raised by ``Publisher.publish``, ``partial`` is what the call did store before it gave up (the
    other batches, and what a failed batch's answer said was stored), indexed like a result.
    """

    def __init__(
        self, message: str, *, status: int | None = None, body: Any = None, partial: PublishResult | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = body
        self.partial = partial


@dataclass
class PublishResult:
    """What happened to the records of one ``publish`` call.

    ``accepted``: acknowledged by Kafka now; ``duplicates``: already accepted earlier (a retry);
    ``rejected``: refused (``errors`` says why, by index into the input); ``dead_lettered``:
    refused records written to events.dlq. ``event_ids[i]`` is the id of input ``i`` (None
    where it was refused before it had one).
    """

    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    dead_lettered: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    event_ids: list[str | None] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.rejected == 0

    def add(self, other: PublishResult) -> None:
        self.accepted += other.accepted
        self.duplicates += other.duplicates
        self.rejected += other.rejected
        self.dead_lettered += other.dead_lettered
        self.errors += other.errors
        self.event_ids += other.event_ids


def dlq_source(source: str, kind: Kind) -> str:
    """``source`` of the DeadLetter records written for refused input (``dlq replay`` reads it back)."""
    return f"{source}:{kind}"


class DeadLetterProducer(Protocol):
    async def dead_letter(
        self, *, source: str, reason: str, error_type: str, original: bytes, correlation_id: str | None = None
    ) -> asyncio.Future[Any]: ...


async def dead_letter(producer: DeadLetterProducer, rejection: Rejection, source: str) -> asyncio.Future[Any]:
    """Enqueue the DeadLetter record of a refused record; the future resolves on the broker's ack."""
    return await producer.dead_letter(
        source=source,
        reason=rejection.reason,
        error_type=rejection.error_type,
        original=rejection.original,
        correlation_id=rejection.correlation_id,
    )


async def wait_all(futures: Sequence[asyncio.Future[Any]]) -> None:
    """Wait until every future is done; raise the first failure.

    Awaited in order: records of one producer batch complete together, so most futures are done
    by the time they are reached (cheaper than a callback per future, as gather adds).
    """
    for fut in futures:
        if not fut.done():
            await asyncio.wait([fut])
    first: BaseException | None = None
    for fut in futures:
        error = asyncio.CancelledError() if fut.cancelled() else fut.exception()
        first = first or error
    if first is not None:
        raise first


class Transport(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def send(self, kind: Kind, items: Sequence[Any], start: int) -> PublishResult: ...

    async def send_unparseable(self, kind: Kind, data: bytes, reason: str, index: int) -> PublishResult: ...

    async def schemas(self) -> dict[str, Any]: ...


# --- over HTTP -----------------------------------------------------------------------------------


class HttpOptions(TypedDict, total=False):
    """The keyword options of :class:`HttpTransport` (where its defaults are), for :meth:`Publisher.http`."""

    source: str
    timeout_s: float
    max_retries: int
    client: httpx.AsyncClient


class HttpTransport:
    """POSTs batches to the ingestion service; retries 429/502/503/504 and dropped connections."""

    RETRY_STATUS = frozenset({429, 502, 503, 504})

    def __init__(
        self,
        url: str = DEFAULT_URL,
        token: str | None = None,
        *,
        source: str = "sdk",
        timeout_s: float = 60.0,
        max_retries: int = 10,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        headers = {
            "Authorization": f"Bearer {token or LOCAL_API_TOKEN}",
            "Content-Type": "application/json",
            SOURCE_HEADER: source,
        }
        self._client = client or httpx.AsyncClient(base_url=url.rstrip("/"), timeout=timeout_s)
        self._headers = headers
        self.max_retries = max_retries

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        await self._client.aclose()

    async def _post(self, kind: Kind, body: bytes) -> httpx.Response:
        delay = 0.2
        for attempt in range(self.max_retries + 1):
            try:
                resp = await self._client.post(f"/v1/{kind}", content=body, headers=self._headers)
            except httpx.TransportError as exc:
                if attempt == self.max_retries:
                    raise PublishError(f"ingestion service unreachable: {exc!r}") from exc
                wait = delay
            else:
                if resp.status_code not in self.RETRY_STATUS:
                    return resp
                if attempt == self.max_retries:
                    return resp
                wait = _retry_after(resp, delay)
            await asyncio.sleep(wait * (0.75 + random.random() / 2))
            delay = min(delay * 2, 10.0)
        raise AssertionError("unreachable")  # pragma: no cover

    async def send(self, kind: Kind, items: Sequence[Any], start: int) -> PublishResult:
        resp = await self._post(kind, orjson.dumps({kind: list(items)}, default=str))
        return self._result(resp, start, len(items))

    async def send_unparseable(self, kind: Kind, data: bytes, reason: str, index: int) -> PublishResult:
        """Post bytes that are not JSON as they are: the service refuses them and keeps them in the DLQ."""
        return self._result(await self._post(kind, data), index, 1)

    def _result(self, resp: httpx.Response, start: int, count: int) -> PublishResult:
        try:
            body = resp.json()
        except ValueError:
            body = None
        if resp.status_code in (401, 403):
            raise PublishError(
                f"the service refused the token ({resp.status_code})", status=resp.status_code, body=body
            )
        if not isinstance(body, dict) or "accepted" not in body:
            raise PublishError(
                f"unexpected answer {resp.status_code}: {resp.text[:300]}", status=resp.status_code, body=body
            )
        if resp.status_code >= 500:
            raise PublishError(
                f"the service could not store the batch ({resp.status_code}, retries exhausted): "
                f"{body.get('message', '')}",
                status=resp.status_code,
                body=body,
                partial=self._parse(body, start, count),  # what it did store (e.g. acknowledged in time)
            )
        if resp.status_code in (400, 413) and count > 1:
            raise PublishError(f"the service refused the request: {body.get('message')}", status=resp.status_code)
        return self._parse(body, start, count)

    @staticmethod
    def _parse(body: dict[str, Any], start: int, count: int) -> PublishResult:
        errors = [{**e, "index": start + (e["index"] or 0)} for e in body.get("errors", [])]
        ids: list[str | None] = [None] * count
        for r in body.get("results", []):
            if r.get("status") in ("accepted", "duplicate") and 0 <= r.get("index", -1) < count:
                ids[r["index"]] = r.get("event_id")
        return PublishResult(
            accepted=int(body["accepted"]),
            duplicates=int(body.get("duplicates", 0)),
            rejected=int(body.get("rejected", 0)),
            dead_lettered=int(body.get("dead_lettered", 0)),
            errors=errors,
            event_ids=ids,
        )

    async def schemas(self) -> dict[str, Any]:
        try:
            resp = await self._client.get("/v1/schemas")
        except httpx.TransportError as exc:
            raise PublishError(f"ingestion service unreachable at {self._client.base_url}: {exc!r}") from exc
        if resp.status_code != 200:
            raise PublishError(f"GET /v1/schemas answered {resp.status_code}", status=resp.status_code)
        data: dict[str, Any] = resp.json()
        return data


def _retry_after(resp: httpx.Response, default: float) -> float:
    try:
        return max(0.05, min(float(resp.headers.get("retry-after", default)), 30.0))
    except ValueError:
        return default


# --- straight to Kafka ---------------------------------------------------------------------------


class KafkaTransport:
    """Validates like the service, then produces with the platform's producer (acks=all, idempotent)."""

    def __init__(
        self,
        stack: StackSettings,
        validator: Validator,
        *,
        source: str = "sdk-kafka",
        producer_options: Mapping[str, Any] | None = None,
        connect_timeout_s: float = 60.0,
    ) -> None:
        self.stack = stack
        self.validator = validator
        self.source = source
        self.connect_timeout_s = connect_timeout_s
        self._producer_options = dict(producer_options or {})
        self._registry: SchemaRegistryClient | None = None
        self._producer: EventProducer | None = None

    @property
    def producer(self) -> EventProducer:
        if self._producer is None:
            raise RuntimeError("start() the publisher first")
        return self._producer

    async def start(self) -> None:
        # Built here, not in __init__: aiokafka's producer belongs to the running event loop.
        self._registry = SchemaRegistryClient.from_settings(self.stack)
        serde = AvroSerde(self._registry, topic_prefix=self.stack.topic_prefix)
        self._producer = EventProducer(self.stack.kafka, serde, self.source, **self._producer_options)
        try:
            await asyncio.wait_for(self._producer.start([EVENTS_RAW, LABELS]), self.connect_timeout_s)
        except (TimeoutError, KafkaError, RegistryError) as exc:
            raise PublishError(f"cannot reach Kafka at {self.stack.kafka} or the schema registry: {exc!r}") from exc

    async def close(self) -> None:
        try:
            if self._producer is not None:
                await self._producer.stop()
        finally:
            if self._registry is not None:
                await self._registry.close()
            self._producer = self._registry = None

    async def send(self, kind: Kind, items: Sequence[Any], start: int) -> PublishResult:
        valid, rejected = self.validator.validate(
            kind, items, producer=self.producer.name, source=self.source, start=start
        )
        producer = self.producer
        encode = producer.serde.encode
        try:
            # encode + send_raw is EventProducer.send without its per-record metric: this is the hot path.
            futures = [await producer.send_raw(v.topic, encode(v.topic, v.record), key=v.key) for v in valid]
            where = dlq_source(self.source, kind)
            dlq = [await dead_letter(producer, r, where) for r in rejected]
            await wait_all(futures)  # an unacknowledged record raises: nothing is reported accepted
        except KafkaError as exc:
            raise PublishError(f"Kafka did not take the batch: {exc!r}") from exc
        dlq_ok = sum(1 for r in await asyncio.gather(*dlq, return_exceptions=True) if not isinstance(r, BaseException))
        ids: list[str | None] = [None] * len(items)
        for v in valid:
            ids[v.index - start] = v.event_id
        return PublishResult(
            accepted=len(valid),
            rejected=len(rejected),
            dead_lettered=dlq_ok,
            errors=[e for r in rejected for e in r.errors()],
            event_ids=ids,
        )

    async def send_unparseable(self, kind: Kind, data: bytes, reason: str, index: int) -> PublishResult:
        rejection = Rejection(index, [Problem(None, MALFORMED_JSON, reason)], data)
        fut = await dead_letter(self.producer, rejection, dlq_source(self.source, kind))
        await fut
        return PublishResult(rejected=1, dead_lettered=1, errors=rejection.errors(), event_ids=[None])

    async def schemas(self) -> dict[str, Any]:
        described: dict[str, Any] = self.validator.describe()
        return described


# --- the publisher -----------------------------------------------------------------------------------


class Publisher:
    """Publishes events and labels in batches, with bounded concurrency, over a transport."""

    def __init__(self, transport: Transport, *, batch_size: int = 500, concurrency: int = 4) -> None:
        if batch_size < 1 or concurrency < 1:
            raise ValueError("batch_size and concurrency must be >= 1")
        self.transport = transport
        self.batch_size = batch_size
        self.concurrency = concurrency
        self._started = False

    @classmethod
    def http(
        cls,
        url: str = DEFAULT_URL,
        token: str | None = None,
        *,
        batch_size: int = 500,
        concurrency: int = 4,
        **options: Unpack[HttpOptions],
    ) -> Publisher:
        """Through the ingestion service at ``url`` (token default: the local-mode token); ``options``
        are :class:`HttpTransport`'s (``source``, ``timeout_s``, ``max_retries``, ``client``)."""
        return cls(HttpTransport(url, token, **options), batch_size=batch_size, concurrency=concurrency)

    @classmethod
    def kafka(
        cls,
        stack: StackSettings | None = None,
        project: Project | None = None,
        *,
        source: str = "sdk-kafka",
        batch_size: int = 1000,
        concurrency: int = 2,
        producer_options: Mapping[str, Any] | None = None,
    ) -> Publisher:
        """Straight to Kafka with the same validation (the project file gives the event types)."""
        stack = stack or StackSettings()
        validator = Validator.from_project(project or project_from_settings(stack))
        transport = KafkaTransport(stack, validator, source=source, producer_options=producer_options)
        return cls(transport, batch_size=batch_size, concurrency=concurrency)

    async def start(self) -> Publisher:
        if not self._started:
            try:
                await self.transport.start()
            except BaseException:
                await self.transport.close()
                raise
            self._started = True
        return self

    async def close(self) -> None:
        await self.transport.close()
        self._started = False

    async def __aenter__(self) -> Publisher:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def publish(self, events: Iterable[Any], *, on_progress: Progress | None = None) -> PublishResult:
        """Publish events (dicts shaped like the HTTP API's); see :class:`PublishResult`."""
        return await self._publish("events", [with_event_id(e) for e in events], on_progress)

    async def publish_labels(self, labels: Iterable[Any], *, on_progress: Progress | None = None) -> PublishResult:
        """Publish ground-truth labels (``{"event_id", "entity_id", "label"}``, optionally ``"project"``: the
        label is then checked against that project's classes)."""
        return await self._publish("labels", list(labels), on_progress)

    async def reject_unparseable(
        self, data: bytes, reason: str, *, kind: Kind = "events", index: int = 0
    ) -> PublishResult:
        """Report input that is not JSON (a bad line of a file) so it lands in the DLQ like any refusal."""
        await self.start()
        return await self.transport.send_unparseable(kind, data, reason, index)

    async def schemas(self) -> dict[str, Any]:
        """What can be sent: the event types with their fields, and the label classes."""
        await self.start()
        return await self.transport.schemas()

    async def _publish(self, kind: Kind, items: list[Any], on_progress: Progress | None) -> PublishResult:
        await self.start()
        chunks = [(i, items[i : i + self.batch_size]) for i in range(0, len(items), self.batch_size)]
        gate = asyncio.Semaphore(self.concurrency)

        async def one(start: int, chunk: list[Any]) -> PublishResult:
            async with gate:
                result = await self.transport.send(kind, chunk, start)
            if on_progress is not None:
                on_progress(len(chunk))
            return result

        total = PublishResult()
        first_error: BaseException | None = None
        # Every batch runs to its end, so that a failure can say what the others stored.
        for (_, chunk), part in zip(
            chunks, await asyncio.gather(*(one(s, c) for s, c in chunks), return_exceptions=True), strict=True
        ):
            if isinstance(part, BaseException):
                first_error = first_error or part
                stored = part.partial if isinstance(part, PublishError) else None
                total.add(stored if stored is not None else PublishResult(event_ids=[None] * len(chunk)))
            else:
                total.add(part)
        if first_error is not None:
            if isinstance(first_error, PublishError):
                first_error.partial = total
            raise first_error
        return total
