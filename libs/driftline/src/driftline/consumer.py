"""The Kafka consumer runner on aiokafka: one consumer group, at-least-once, with a dead-letter topic.

For every batch the runner decodes, calls the handler, waits for everything produced for the batch
to be acknowledged, and only then commits the offsets. What was produced for the batch is every
``send``/``send_raw``/``dead_letter`` made while the runner handles it (collected through a context
variable, see :func:`driftline.producer.collect_deliveries`); ``publish`` waits for its own
acknowledgement and raises to its caller. If any of those deliveries failed, the offsets are not
committed and the batch is handled again after a backoff, like any outage. A record that cannot be
decoded, or that the handler refuses, is written to ``events.dlq`` with the reason and its original
bytes, and the consumer moves on. An outage (broker, database, object store, registry) is retried
with backoff (:mod:`driftline.retry`) and never skips a record. SIGTERM (via ``stop()``) finishes
the current batch, commits, and leaves the group.
"""

from __future__ import annotations

import asyncio
import re
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError
from prometheus_client import Counter, Histogram

from driftline import tracing
from driftline.connect import KafkaConnection
from driftline.events import Event, record_of
from driftline.lag import LagGauge
from driftline.logging import bind_event, get_logger
from driftline.membership import InstanceSlot, stable_instance_id
from driftline.producer import EventProducer, collect_deliveries, undelivered
from driftline.retry import Backoff, PoisonRecord, is_transient, retry_transient, start_client
from driftline.serde import AvroSerde, DecodeError

log = get_logger(__name__)

CONSUMED = Counter("driftline_consumed_total", "Records handled", ["group", "topic"])
HANDLER_RETRIES = Counter("driftline_handler_retries_total", "Transient failures retried", ["group"])
BATCH_SECONDS = Histogram("driftline_consumer_batch_seconds", "Time to handle and commit a batch", ["group"])
UNDELIVERED = Counter(
    "driftline_consumer_undelivered_batches_total",
    "Batches handled again because something produced for them was not acknowledged",
    ["group"],
)


Handler = Callable[[Event[Any]], Awaitable[None]]
BatchHandler = Callable[[list[Event[Any]]], Awaitable[None]]
RecordHandler = Callable[[Any], Awaitable[None]]
"""A handler of one typed record (``async def on_model_trained(e: ModelTrained) -> None``)."""
Routes = Mapping[str, RecordHandler]
"""Topic → the handler of its records: how a service says which handler takes which topic."""


def dispatch(routes: Routes) -> Handler:
    """One event handler that calls the route of the event's topic with its typed record."""
    table = dict(routes)

    async def handle(event: Event[Any]) -> None:
        fn = table.get(event.topic)
        if fn is None:
            raise PoisonRecord(f"no handler for topic {event.topic}", "no_route")
        await fn(event.record)

    return handle


def decoded_event(
    rec: ConsumerRecord[bytes, bytes], topic: str, value: dict[str, Any], schema_id: int, serde: AvroSerde
) -> Event[Any]:
    """The Event[Any] of a decoded consumer record (topic without the prefix), its typed record included."""
    t = serde.topic_or_none(topic)
    try:
        record = record_of(topic, value, t.record if t is not None else None)
    except (KeyError, TypeError) as exc:
        raise DecodeError(f"record does not fit {t.record if t else topic}: missing or wrong field {exc}") from exc
    return Event(topic, rec.partition, rec.offset, rec.key, value, rec.value or b"", schema_id, rec.timestamp, record)


class TopicConsumer:
    """What the consumer runner and the topic follower (:mod:`driftline.follow`) share.

    Logical topics read through one serde (their physical names carry its prefix), by an aiokafka
    consumer that reads committed transactions only and never commits on its own; a producer for
    dead letters; a stop flag. With a ``group_id`` the consumer subscribes to the topics as a
    member of that group; without one it is given its partitions later (``assign``).
    """

    def __init__(
        self,
        *,
        topics: Sequence[str],
        kafka: KafkaConnection,
        serde: AvroSerde,
        producer: EventProducer,
        poll_timeout_ms: int,
        group_id: str | None,
        client_id: str,
        auto_offset_reset: str,
        consumer_options: dict[str, Any] | None = None,
    ) -> None:
        self.topics = list(topics)
        self.kafka = kafka
        self.prefix = serde.topic_prefix
        self.serde = serde
        self.producer = producer
        self.poll_timeout_ms = poll_timeout_ms
        self.auto_offset_reset = auto_offset_reset
        subscribed = [self.prefix + t for t in self.topics] if group_id is not None else []
        self._consumer = AIOKafkaConsumer(
            *subscribed,
            **kafka.client_kwargs(),
            group_id=group_id,
            enable_auto_commit=False,
            auto_offset_reset=auto_offset_reset,
            isolation_level="read_committed",
            client_id=f"driftline-{client_id}",
            **(consumer_options or {}),
        )
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        """Ask the loop to finish what it is doing and return (the runner commits its current batch first)."""
        self._stopping.set()

    def _stop_requested(self) -> bool:
        return self._stopping.is_set()

    async def _event(self, rec: ConsumerRecord[bytes, bytes]) -> Event[Any]:
        """The Event of a consumed record, retrying outages of the registry; DecodeError when it
        cannot be decoded."""
        topic = rec.topic[len(self.prefix) :]
        value, schema_id = await retry_transient(
            lambda: self.serde.decode(rec.value, topic), what="decode", stopping=self._stop_requested
        )
        return decoded_event(rec, topic, value, schema_id, self.serde)


class ConsumerRunner(TopicConsumer):
    """Runs a handler over one or more topics in a consumer group, at-least-once, with a DLQ.

    Give ``handler`` (one event at a time) and/or ``batch_handler`` (a whole batch, e.g. for one
    COPY into PostgreSQL). When the batch handler fails with a non-transient error, the batch is
    retried one event at a time through ``handler`` so the poison record is isolated.
    """

    def __init__(
        self,
        *,
        group_id: str,
        topics: Sequence[str],
        kafka: KafkaConnection,
        serde: AvroSerde,
        producer: EventProducer,
        handler: Handler | None = None,
        batch_handler: BatchHandler | None = None,
        max_records: int = 500,
        poll_timeout_ms: int = 500,
        max_attempts: int = 3,
        auto_offset_reset: str = "earliest",
        after_batch: Callable[[], Awaitable[None]] | None = None,
        consumer_options: dict[str, Any] | None = None,
    ) -> None:
        if handler is None and batch_handler is None:
            raise ValueError("give a handler or a batch_handler")
        self.group_id = serde.topic_prefix + group_id
        options = dict(consumer_options or {})
        self._slot: InstanceSlot | None = None
        if "group_instance_id" not in options:
            # Static membership: a copy restarted after a crash takes its partitions back at once.
            lock_dir = Path(tempfile.gettempdir()) / "driftline-members" / re.sub(r"[^\w.-]", "_", self.group_id)
            self._slot = stable_instance_id(group_id, lock_dir)
            options["group_instance_id"] = self._slot.id
        super().__init__(
            topics=topics,
            kafka=kafka,
            serde=serde,
            producer=producer,
            poll_timeout_ms=poll_timeout_ms,
            group_id=self.group_id,
            client_id=group_id,
            auto_offset_reset=auto_offset_reset,
            consumer_options=options,
        )
        self.handler = handler
        self.batch_handler = batch_handler
        self.max_records = max_records
        self.max_attempts = max_attempts
        self.after_batch = after_batch
        self._running = False
        self.last_batch_at = 0.0
        self.processed = 0
        self.lag = LagGauge(self.group_id)
        self._committed: dict[TopicPartition, int] = {}

    @property
    def running(self) -> bool:
        return self._running

    async def run(self) -> None:
        await start_client(self._consumer.start, self.kafka, what=f"consumer {self.group_id} start")
        self._running = True
        log.info("consumer_started", group=self.group_id, topics=self.topics)
        # Its own task: the lag keeps being reported while a handler is slow or stuck.
        lag_task = asyncio.create_task(self._lag_loop(), name=f"lag:{self.group_id}")
        try:
            while not self._stopping.is_set():
                batches = await self._consumer.getmany(timeout_ms=self.poll_timeout_ms, max_records=self.max_records)
                for tp, records in batches.items():
                    if self._stopping.is_set():
                        break
                    with BATCH_SECONDS.labels(self.group_id).time():
                        done = await self._handle_partition_batch(tp, records)
                    if done is not None:
                        await self._commit(tp, done)
                if self.after_batch is not None and batches:
                    await self.after_batch()
                self.last_batch_at = time.monotonic()
        finally:
            self._running = False
            lag_task.cancel()
            await asyncio.gather(lag_task, return_exceptions=True)
            self.lag.clear()
            await self._consumer.stop()
            if self._slot is not None:
                self._slot.release()
            log.info("consumer_stopped", group=self.group_id, processed=self.processed)

    async def _lag_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                await self._export_lag()
            except Exception as exc:  # a metric never stops the consumer
                log.warning("consumer_lag_unavailable", group=self.group_id, error=repr(exc)[:300])
            await asyncio.sleep(self.lag.interval_s)

    async def _export_lag(self) -> None:
        """driftline_consumer_lag of the partitions assigned to this member (see driftline.lag)."""
        assigned = self._consumer.assignment()
        for tp in set(self._committed) - assigned:
            del self._committed[tp]  # revoked: its next owner commits there now

        async def done(topic: str, partition: int) -> int | None:
            tp = TopicPartition(topic, partition)
            if tp not in self._committed:
                committed = await self._consumer.committed(tp)
                if committed is None:  # nothing committed yet: the group starts at its reset point
                    if self.auto_offset_reset == "earliest":
                        return int((await self._consumer.beginning_offsets([tp]))[tp])
                    return await self._consumer.position(tp)
                self._committed[tp] = committed
            return self._committed[tp]

        await self.lag.update(
            [(tp.topic, tp.partition) for tp in assigned],
            lambda topic, partition: self._consumer.highwater(TopicPartition(topic, partition)),
            done,
        )

    async def _commit(self, tp: TopicPartition, last_offset: int) -> None:
        try:
            await self._consumer.commit({tp: last_offset + 1})
            self._committed[tp] = last_offset + 1
        except CommitFailedError as exc:
            # The partition moved to another member during a rebalance; it re-reads from the last
            # committed offset and every sink is idempotent, so nothing is lost or doubled.
            log.warning("commit_failed_rebalance", group=self.group_id, partition=tp.partition, error=str(exc))

    async def _handle_partition_batch(
        self, tp: TopicPartition, records: list[ConsumerRecord[bytes, bytes]]
    ) -> int | None:
        """Handle records of one partition; returns the last offset whose effect is durable.

        Durable includes Kafka's acknowledgement of everything produced for the batch (handler
        outputs and dead letters). When one was not acknowledged, the whole batch is handled again
        after a backoff (sinks are idempotent, as for a replay after a crash) and never skipped.
        """
        backoff = Backoff()
        while True:
            with collect_deliveries() as produced:
                handled = await self._handle_records(records)
            if handled is None:
                return None  # stopping in the middle of retries: nothing committed, replayed later
            failures = await undelivered(produced)
            if not failures:
                break
            UNDELIVERED.labels(self.group_id).inc()
            if self._stopping.is_set():
                return None  # not committed: the batch is read again after the restart
            delay = backoff.next_delay()
            log.warning(
                "batch_not_delivered_retrying",
                group=self.group_id,
                partition=tp.partition,
                first_offset=records[0].offset,
                last_offset=records[-1].offset,
                undelivered=len(failures),
                of=len(produced),
                error=repr(failures[0])[:300],
                retry_in_s=round(delay, 2),
            )
            await asyncio.sleep(delay)
        self.processed += handled
        CONSUMED.labels(self.group_id, tp.topic).inc(handled)
        last: int = records[-1].offset
        return last

    async def _handle_records(self, records: list[ConsumerRecord[bytes, bytes]]) -> int | None:
        """Decode and handle (dead-lettering what cannot be decoded); how many were decoded, or None
        when stopping mid-way."""
        events: list[tuple[ConsumerRecord[bytes, bytes], Event[Any]]] = []
        for rec in records:
            try:
                event = await self._event(rec)
            except DecodeError as exc:
                await self._dead_letter(rec, str(exc), "decode_error", None, 1)
                continue
            events.append((rec, event))
        if events:
            consumed = [tracing.Consumed(r.topic, r.partition, r.offset, r.headers, e.event_id) for r, e in events]
            with tracing.processing(consumed, self.group_id):
                if not await self._handle_events(events):
                    return None
        return len(events)

    async def _handle_events(self, events: list[tuple[ConsumerRecord[bytes, bytes], Event[Any]]]) -> bool:
        if self.batch_handler is not None:
            bind_event(topic=events[0][1].topic, event_id=None, correlation_id=None, batch=len(events))
            try:
                await retry_transient(
                    lambda: self.batch_handler([e for _, e in events]),  # type: ignore[misc]
                    what=f"{self.group_id} batch",
                    stopping=self._stop_requested,
                    on_retry=lambda _: HANDLER_RETRIES.labels(self.group_id).inc(),
                )
                return True
            except Exception as exc:
                if is_transient(exc):  # only when stopping
                    return False
                if self.handler is None:
                    log.warning("batch_failed_isolating", error=repr(exc)[:300])
                    return await self._isolate_without_handler(events, exc)
                log.warning("batch_failed_isolating", error=repr(exc)[:300])
        for rec, event in events:
            if not await self._handle_one(rec, event):
                return False
        return True

    async def _isolate_without_handler(
        self, events: list[tuple[ConsumerRecord[bytes, bytes], Event[Any]]], first_error: Exception
    ) -> bool:
        """No per-event handler: run the batch handler on each event alone."""
        assert self.batch_handler is not None
        batch_handler = self.batch_handler

        async def one(event: Event[Any]) -> None:
            await batch_handler([event])

        for rec, event in events:
            if not await self._handle_one(rec, event, fn=one):
                return False
        return True

    async def _handle_one(
        self,
        rec: ConsumerRecord[bytes, bytes],
        event: Event[Any],
        fn: Handler | None = None,
    ) -> bool:
        fn = fn or self.handler
        assert fn is not None
        bind_event(topic=event.topic, event_id=event.event_id, correlation_id=event.correlation_id)
        attempts = 0
        backoff = Backoff()
        while True:
            attempts += 1
            try:
                await fn(event)
                return True
            except PoisonRecord as exc:
                await self._dead_letter(rec, exc.reason, exc.error_type, event.correlation_id, attempts)
                return True
            except Exception as exc:
                if is_transient(exc):
                    if self._stopping.is_set():
                        return False
                    HANDLER_RETRIES.labels(self.group_id).inc()
                    delay = backoff.next_delay()
                    log.warning("handler_transient_failure", error=repr(exc)[:300], retry_in_s=round(delay, 2))
                    await asyncio.sleep(delay)
                    attempts -= 1  # outages do not count against the record
                    continue
                if attempts >= self.max_attempts:
                    log.error("handler_failed_dead_lettering", error=repr(exc)[:500], attempts=attempts)
                    await self._dead_letter(
                        rec, f"handler error: {exc!r}"[:2000], "handler_error", event.correlation_id, attempts
                    )
                    return True
                log.warning("handler_failed_retrying", error=repr(exc)[:300], attempt=attempts)
                await asyncio.sleep(backoff.next_delay())

    async def _dead_letter(
        self,
        rec: ConsumerRecord[bytes, bytes],
        reason: str,
        error_type: str,
        correlation_id: str | None,
        attempts: int,
    ) -> None:
        structlog.contextvars.bind_contextvars(topic=rec.topic, offset=rec.offset)
        log.warning("record_dead_lettered", reason=reason[:300], error_type=error_type)
        # Enqueued only: the send is collected with the batch's, whose acknowledgements gate the commit.
        await retry_transient(
            lambda: self.producer.dead_letter(
                source=f"consumer:{self.group_id}",
                reason=reason,
                error_type=error_type,
                original=rec.value or b"",
                record=rec,
                correlation_id=correlation_id,
                attempts=attempts,
            ),
            what="dead letter",
        )
