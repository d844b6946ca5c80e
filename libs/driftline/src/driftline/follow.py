"""Reading a small control topic in full, outside any consumer group, then following it live.

Some state is not split between the copies of a service but rebuilt by each of them from a
topic's whole history (deployment's model cache from ``models.promoted``, monitoring's champion
reference). :class:`TopicFollower` assigns itself every partition, reads from the beginning up to
the end offsets seen at start, hands that history (in offset order per partition) to
``on_replayed`` in one call (so a service can act on the latest state only, e.g. load one model
rather than every model ever promoted), then calls ``on_event`` for every later record. Nothing
is committed: a restart replays again.

A record that cannot be decoded is logged and skipped during the replay, and dead-lettered when
it arrives live (dead-lettering it at every replay would duplicate it in the DLQ). A live record
the handler refuses (:class:`~driftline.retry.PoisonRecord`), or fails on ``max_attempts`` times
in a row with an error that is not an outage, is dead-lettered (``handler_error``) and the
follower goes on; an outage is retried until it ends and never skips a record.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiokafka import ConsumerRecord, TopicPartition

from driftline import tracing
from driftline.connect import KafkaConnection
from driftline.consumer import TopicConsumer
from driftline.events import Event
from driftline.kafka import partitions_of
from driftline.logging import bind_event, get_logger
from driftline.producer import EventProducer
from driftline.retry import Backoff, PoisonRecord, retry_transient, start_client
from driftline.serde import AvroSerde, DecodeError

log = get_logger(__name__)


class TopicFollower(TopicConsumer):
    def __init__(
        self,
        *,
        name: str,
        topics: Sequence[str],
        kafka: KafkaConnection,
        serde: AvroSerde,
        producer: EventProducer,
        on_replayed: Callable[[list[Event[Any]]], Awaitable[None]],
        on_event: Callable[[Event[Any]], Awaitable[None]],
        poll_timeout_ms: int = 500,
        max_attempts: int = 3,
    ) -> None:
        self.max_attempts = max_attempts
        super().__init__(
            topics=topics,
            kafka=kafka,
            serde=serde,
            producer=producer,
            poll_timeout_ms=poll_timeout_ms,
            group_id=None,
            client_id=f"{name}-follower",
            # The reset that assign() starts races seek_to_beginning(); with the default ("latest")
            # it can win and the replay then starts at the end and misses the history.
            auto_offset_reset="earliest",
        )
        self.name = name
        self.on_replayed = on_replayed
        self.on_event = on_event
        self.caught_up = asyncio.Event()

    async def _partitions(self) -> list[TopicPartition]:
        physical = [self.prefix + topic for topic in self.topics]
        tps = await partitions_of(self.kafka, physical)
        missing = sorted(set(physical) - {tp.topic for tp in tps})
        if missing:
            raise ConnectionError(f"topic {', '.join(missing)} has no known partitions yet")
        return list(tps)

    async def _decode(self, rec: ConsumerRecord[bytes, bytes], *, live: bool) -> Event[Any] | None:
        if rec.value is None:
            return None  # a tombstone of a compacted topic: the record before it said what it ends
        try:
            return await self._event(rec)
        except DecodeError as exc:
            reason = str(exc)
            log.warning("undecodable_record_skipped", topic=rec.topic, offset=rec.offset, error=reason, live=live)
            if live:
                await self._dead_letter(rec, reason, "decode_error")
            return None

    async def _dead_letter(
        self, rec: ConsumerRecord[bytes, bytes], reason: str, error_type: str, attempts: int = 1
    ) -> None:
        async def send() -> None:
            # A follower has no offsets to hold back, so it waits for the DLQ's acknowledgement
            # itself (such records are rare).
            delivered = await self.producer.dead_letter(
                source=f"follower:{self.name}",
                reason=reason,
                error_type=error_type,
                original=rec.value or b"",
                record=rec,
                attempts=attempts,
            )
            await delivered

        await retry_transient(send, what="dead letter", stopping=self._stopping.is_set)

    async def _handle_live(self, rec: ConsumerRecord[bytes, bytes], event: Event[Any]) -> None:
        """Hand a live record to ``on_event``: outages are retried until they end (or until
        stopping), a record the handler refuses (:class:`PoisonRecord`) or fails on
        ``max_attempts`` times goes to the DLQ, and the follower goes on with the next."""
        bind_event(topic=event.topic, event_id=event.event_id, correlation_id=event.correlation_id)
        backoff = Backoff()
        for attempt in range(1, self.max_attempts + 1):
            try:
                await retry_transient(
                    lambda: self.on_event(event), what=f"{self.name} follower handler", stopping=self._stopping.is_set
                )
                return
            except PoisonRecord as exc:
                log.warning("follower_record_refused", follower=self.name, reason=exc.reason[:300])
                await self._dead_letter(rec, exc.reason, exc.error_type, attempt)
                return
            except Exception as exc:
                if self._stopping.is_set():
                    return  # not followed further; a restart replays the topic
                if attempt == self.max_attempts:
                    log.error("follower_handler_failed_dead_lettering", follower=self.name, error=repr(exc)[:500])
                    await self._dead_letter(rec, f"handler error: {exc!r}"[:2000], "handler_error", attempt)
                    return
                log.warning(
                    "follower_handler_failed_retrying", follower=self.name, error=repr(exc)[:300], attempt=attempt
                )
                await asyncio.sleep(backoff.next_delay())

    async def run(self) -> None:
        await start_client(self._consumer.start, self.kafka, what=f"{self.name} follower start")
        try:
            tps = await retry_transient(self._partitions, what=f"{self.name} follower partitions")
            self._consumer.assign(tps)
            end = await self._consumer.end_offsets(tps)
            await self._consumer.seek_to_beginning(*tps)
            history: list[Event[Any]] = []
            while not self._stopping.is_set():
                pending = [tp for tp in tps if await self._consumer.position(tp) < end[tp]]
                if not pending:
                    break
                batches = await self._consumer.getmany(*pending, timeout_ms=self.poll_timeout_ms)
                for records in batches.values():
                    for rec in records:
                        if rec.offset < end[TopicPartition(rec.topic, rec.partition)]:
                            event = await self._decode(rec, live=False)
                        else:  # read past the start-up end in the same fetch: it is live
                            event = await self._decode(rec, live=True)
                        if event is not None:
                            history.append(event)
            if self._stopping.is_set():
                return
            history.sort(key=lambda e: (e.topic, e.partition, e.offset))
            log.info("follower_replayed", follower=self.name, records=len(history))
            await self.on_replayed(history)
            self.caught_up.set()
            while not self._stopping.is_set():
                batches = await self._consumer.getmany(timeout_ms=self.poll_timeout_ms)
                for records in batches.values():
                    for rec in records:
                        event = await self._decode(rec, live=True)
                        if event is None:
                            continue
                        consumed = tracing.Consumed(rec.topic, rec.partition, rec.offset, rec.headers, event.event_id)
                        with tracing.processing([consumed], None):  # groupless: every copy reads it all
                            await self._handle_live(rec, event)
        finally:
            await self._consumer.stop()
