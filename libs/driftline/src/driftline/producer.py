"""The typed Kafka producer on aiokafka, and the collection of what is produced for a consumer batch.

Producer: acks=all and idempotence always; batching via linger/batch size; ``send`` enqueues,
``publish`` waits for the broker's acknowledgement. Every ``send``/``send_raw``/``dead_letter`` made
inside a :func:`collect_deliveries` block (through a context variable) is collected, so that the
consumer runner (:mod:`driftline.consumer`) commits a batch only when all of it was acknowledged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeAlias

from aiokafka import AIOKafkaProducer, ConsumerRecord
from aiokafka.errors import KafkaConnectionError
from aiokafka.partitioner import DefaultPartitioner
from prometheus_client import Counter

from driftline import tracing
from driftline.catalog import EVENTS_DLQ, Topic
from driftline.connect import KafkaConnection
from driftline.events import Envelope, envelope
from driftline.records import DeadLetter, Record
from driftline.retry import start_client
from driftline.serde import AvroSerde

LZ4_LEVEL = 1
"""The lz4 level of every producer of the platform. aiokafka compresses at level 9 (LZ4HC, the
broker's own default for recompression) and offers no setting; level 1 is ~6x faster here for
~8% larger batches (1.25 vs 0.19 ms per 130 KB): at level 9 compression was 3.4% of the features
service's samples (services/features/README.md, "Benchmark")."""


def use_lz4_level(level: int = LZ4_LEVEL) -> None:
    """Make aiokafka's record batch builders (the C one and the pure-Python one) compress lz4 at
    ``level``. They call the module global ``lz4_encode`` they imported from aiokafka.codec
    (pinned in tests/unit/foundation/test_private_api_pins.py)."""
    from aiokafka import codec
    from aiokafka.record import default_records

    def lz4_encode(payload: Any, level_: int = level) -> bytes:
        return codec.lz4_encode(payload, level=level_)

    try:
        from aiokafka.record._crecords import default_records as c_records
    except ImportError:  # pragma: no cover - aiokafka without its C extension
        c_records = None
    for module in (default_records, c_records):
        if module is not None and hasattr(module, "lz4_encode"):
            module.lz4_encode = lz4_encode


DEAD_LETTERED = Counter("driftline_dead_lettered_total", "Records sent to the DLQ", ["source", "error_type"])
PRODUCED = Counter("driftline_produced_total", "Records produced", ["topic"])


class _Deliveries:
    """The delivery futures of what was sent inside one :func:`collect_deliveries` block."""

    __slots__ = ("futures", "open")

    def __init__(self) -> None:
        self.futures: list[asyncio.Future[Any]] = []
        self.open = True


_DELIVERIES: ContextVar[_Deliveries | None] = ContextVar("driftline_deliveries", default=None)


@contextmanager
def collect_deliveries() -> Iterator[list[asyncio.Future[Any]]]:
    """Collect the futures of every ``EventProducer.send``/``send_raw`` made in this block.

    Also from tasks started inside it (they copy the context); a send after the block ended is not
    collected (so a long-lived task started from a handler cannot grow the list).
    """
    deliveries = _Deliveries()
    token = _DELIVERIES.set(deliveries)
    try:
        yield deliveries.futures
    finally:
        deliveries.open = False
        _DELIVERIES.reset(token)


def _track(fut: asyncio.Future[Any]) -> asyncio.Future[Any]:
    deliveries = _DELIVERIES.get()
    if deliveries is not None and deliveries.open:
        deliveries.futures.append(fut)
    return fut


async def undelivered(futures: Sequence[asyncio.Future[Any]]) -> list[BaseException]:
    """Wait for every delivery at once; the failures (empty when the broker acknowledged all)."""
    if not futures:
        return []
    results = await asyncio.gather(*futures, return_exceptions=True)
    return [r for r in results if isinstance(r, BaseException)]


def kafka_key(topic: Topic, record: dict[str, Any]) -> bytes | None:
    value = record.get(topic.key)
    return None if value is None else str(value).encode()


Outgoing: TypeAlias = Record | dict[str, Any]
"""What a producer sends: a typed record (services) or a record dict (tools, tests)."""


def to_wire(topic: Topic, record: Outgoing) -> dict[str, Any]:
    """The dict fastavro writes; a typed record must be the topic's record type."""
    if isinstance(record, dict):
        return record
    if topic.record != record.RECORD:
        raise TypeError(f"topic {topic.name} carries {topic.record}, not {record.RECORD}")
    wire: dict[str, Any] = record.to_avro()
    return wire


class EventProducer:
    """The typed producer: records are checked against their topic's schema when encoded."""

    def __init__(
        self,
        kafka: KafkaConnection,
        serde: AvroSerde,
        producer_name: str,
        *,
        linger_ms: int = 5,
        max_batch_size: int = 256 * 1024,
        compression_type: str | None = "lz4",
        request_timeout_ms: int = 30000,
    ) -> None:
        if compression_type == "lz4":
            use_lz4_level()
        self.serde = serde
        self.kafka = kafka
        self.name = producer_name
        self.prefix = serde.topic_prefix
        self._producer = AIOKafkaProducer(
            **kafka.client_kwargs(),
            acks="all",
            enable_idempotence=True,
            linger_ms=linger_ms,
            max_batch_size=max_batch_size,
            compression_type=compression_type,
            request_timeout_ms=request_timeout_ms,
            client_id=f"driftline-{producer_name}",
        )
        self._partitioner = DefaultPartitioner()  # aiokafka's default: what send() uses
        self._partition_cache: dict[tuple[str, bytes, int], int] = {}

    async def start(self, topics: Iterable[str] = ()) -> None:
        await self.serde.prepare(*topics, EVENTS_DLQ)
        await start_client(self._producer.start, self.kafka, what="kafka producer start")

    async def stop(self) -> None:
        await self._producer.stop()

    def envelope(self, **kwargs: Any) -> Envelope:
        """Envelope fields with this producer's name (see :func:`driftline.events.envelope`)."""
        return envelope(self.name, **kwargs)

    async def _enqueue(self, topic: str, record: Outgoing, key: bytes | None) -> asyncio.Future[Any]:
        t = self.serde.topic(topic)
        wire = to_wire(t, record)
        value = self.serde.encode(topic, wire)
        fut: asyncio.Future[Any] = await self._producer.send(
            self.prefix + topic,
            value=value,
            key=key if key is not None else kafka_key(t, wire),
            headers=tracing.record_headers(self.prefix + topic, wire),
        )
        PRODUCED.labels(topic).inc()
        return fut

    async def send(self, topic: str, record: Outgoing, *, key: bytes | None = None) -> asyncio.Future[Any]:
        """Encode and enqueue; the returned future resolves when the broker acknowledged.

        Inside a consumer runner's batch the future is also collected: the runner commits only
        when it succeeded (see :func:`collect_deliveries`).
        """
        return _track(await self._enqueue(topic, record, key))

    async def send_many(self, topic: str, records: Sequence[Outgoing]) -> list[asyncio.Future[Any]]:
        """Encode and enqueue many records of one topic as whole batches, one per partition (or more
        when one fills ``max_batch_size``): each record keyed and partitioned as :meth:`send` would,
        in order within its partition. Far cheaper per record than ``send`` (no per-record future,
        task or accumulator look-up); the futures, one per batch, resolve when the broker
        acknowledged it, and are collected like ``send``'s (see :func:`collect_deliveries`)."""
        if not records:
            return []
        t = self.serde.topic(topic)
        name = self.prefix + topic
        partitions = sorted(await self._producer.partitions_for(name))
        builders: dict[int, Any] = {}
        futures: list[asyncio.Future[Any]] = []
        for record in records:
            wire = to_wire(t, record)
            value = self.serde.encode(topic, wire)
            key = kafka_key(t, wire)
            headers = tracing.record_headers(name, wire)
            partition = self._partition_of(name, key, partitions)
            builder = builders.get(partition)
            if builder is None:
                builder = builders[partition] = self._producer.create_batch()
            if builder.append(timestamp=None, key=key, value=value, headers=headers) is None:  # full: send it
                futures.append(await self._producer.send_batch(builder, name, partition=partition))
                builder = builders[partition] = self._producer.create_batch()
                if builder.append(timestamp=None, key=key, value=value, headers=headers) is None:
                    raise ValueError(f"a record of {len(value)} bytes does not fit an empty batch")
        for partition, builder in builders.items():
            futures.append(await self._producer.send_batch(builder, name, partition=partition))
        PRODUCED.labels(topic).inc(len(records))
        return [_track(fut) for fut in futures]

    def _partition_of(self, topic: str, key: bytes | None, partitions: list[int]) -> int:
        """The partition ``send`` would choose: the producer's default partitioner (murmur2 of the
        key, as Kafka's Java client); cached per key, since it is pure Python."""
        if key is None:
            return int(self._partitioner(None, partitions, partitions))
        cache = self._partition_cache
        hit = cache.get((topic, key, len(partitions)))
        if hit is None:
            if len(cache) > 100_000:
                cache.clear()
            hit = cache[(topic, key, len(partitions))] = int(self._partitioner(key, partitions, partitions))
        return hit

    async def send_raw(self, topic: str, value: bytes, *, key: bytes | None = None) -> asyncio.Future[Any]:
        """Enqueue bytes that are already encoded (DLQ replay, benchmarks); ``topic`` is logical."""
        fut: asyncio.Future[Any] = await self._producer.send(
            self.prefix + topic, value=value, key=key, headers=tracing.record_headers(self.prefix + topic, {})
        )
        return _track(fut)

    async def tombstone(self, topic: str, key: bytes) -> Any:
        """Write a null value for ``key`` on a compacted topic and wait for the acknowledgement."""
        fut: asyncio.Future[Any] = await self._producer.send(
            self.prefix + topic, value=None, key=key, headers=tracing.record_headers(self.prefix + topic, {})
        )
        return await fut

    async def publish(self, topic: str, record: Outgoing, *, key: bytes | None = None) -> Any:
        """Send one record and wait for the broker's acknowledgement (acks=all); a failure raises here."""
        return await (await self._enqueue(topic, record, key))

    async def publish_many(self, items: Sequence[tuple[str, Outgoing]]) -> list[Any]:
        """Send many records, then wait for all acknowledgements at once; a failure raises here."""
        futures = [await self._enqueue(topic, record, None) for topic, record in items]
        return list(await asyncio.gather(*futures))

    async def flush(self) -> None:
        await self._producer.flush()

    async def dead_letter(
        self,
        *,
        source: str,
        reason: str,
        error_type: str,
        original: bytes,
        record: ConsumerRecord[bytes, bytes] | None = None,
        correlation_id: str | None = None,
        attempts: int = 1,
    ) -> asyncio.Future[Any]:
        """Enqueue a DeadLetter record for refused input."""
        DEAD_LETTERED.labels(source, error_type).inc()
        dlq = DeadLetter(
            **self.envelope(correlation_id=correlation_id),
            source=source,
            reason=reason[:4000],
            error_type=error_type,
            original=original,
            original_topic=record.topic if record else None,
            original_partition=record.partition if record else None,
            original_offset=record.offset if record else None,
            original_key=record.key if record else None,
            attempts=attempts,
        )
        return await self.send(EVENTS_DLQ, dlq)

    async def ping(self) -> None:
        """Readiness: a broker answers a metadata request now.

        aiokafka reports a failed refresh by returning False and keeps the last metadata it had, so
        the cached broker list says nothing about the broker being up: the refresh's result does."""
        updated = await asyncio.wait_for(self._producer.client.force_metadata_update(), timeout=5)
        if not updated:
            raise KafkaConnectionError("no broker answered a metadata request")
        if not self._producer.client.cluster.brokers():
            raise KafkaConnectionError("no broker known")
