"""The faust side of the service: one ``faust.App`` (id = ``<topic prefix>features``) consuming
events.raw as raw bytes, a table holding each entity's window state (changelog topic in Kafka,
so a restarted or second worker recovers it), and one agent that hands batches to the
:class:`~driftline_features.handlers.FeatureProcessor`.

Acknowledgement discipline: the agent takes batches with ``noack_take`` and acknowledges a
batch's events only after the processor returned, i.e. after the vectors were acknowledged by
the broker and written to the online store. faust commits acknowledged offsets only, and flushes
its producer (the table changelog) before each commit.

:func:`running` is the service's wiring ``context``: the app runs while the HTTP app serves, and
on shutdown the batch in progress finishes (bounded) before faust stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import tempfile
import time
import warnings
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import faust
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from faust.contrib.asgi import faust_app_running
from faust.types import TP
from faust.types.auth import CredentialsT

from driftline.catalog import EVENTS_RAW
from driftline.connect import SASL_PROTOCOLS, KafkaConnection
from driftline.lag import LagGauge
from driftline.logging import get_logger
from driftline.membership import stable_instance_id
from driftline.retry import TransientError, retry_transient, start_client
from driftline.settings import StackSettings
from driftline_features import metrics
from driftline_features.config import NAME, FeaturesSettings
from driftline_features.delivery import use_batch_delivery
from driftline_features.handlers import FeatureProcessor, SourceRecord
from driftline_features.offset_guard import Hole, OffsetGuard

log = get_logger(__name__)

STATE_TABLE = "entity-windows"
OFFSETS_TABLE = "source-offsets"


class ChangelogWrites:
    """Changelog records sent but not yet acknowledged by the broker.

    faust's own flush before a commit gives up on its send buffer after 0.1 s without a send, so
    on a slow broker offsets can be committed while table changes are still only in memory; a
    worker killed then loses state the commit counts as done. The agent therefore waits for its
    changelog writes itself before it acknowledges a batch."""

    def __init__(self) -> None:
        self.pending: list[asyncio.Future[Any]] = []

    def add(self, fut: Any) -> None:
        self.pending.append(fut)

    async def wait(self) -> None:
        """Until every pending write is acknowledged (bounded by the producer's delivery timeout;
        a write that fails raises)."""
        pending, self.pending = self.pending, []
        if pending:
            await asyncio.gather(*pending)


class ChangelogBatches:
    """Changelog records as whole producer batches, one per changelog partition (or more when one
    fills the producer's batch size), through faust's own producer (its aiokafka producer: the one
    faust flushes before a commit). One future per batch instead of faust's per-record path
    (``Topic.send_soon``: a FutureMessage, the producer buffer, a ``send`` each), which the profile
    put at ~6% of the service. faust's memory store keeps no persisted changelog offsets, so
    skipping ``Table._on_changelog_sent`` loses nothing."""

    def __init__(self, app: faust.App) -> None:
        self.app = app

    async def send(self, topic: str, records: Mapping[int, Sequence[tuple[bytes, bytes]]]) -> list[Any]:
        # faust's Producer exposes no batch send; its aiokafka producer is private (pinned in tests).
        producer: Any = self.app.producer._ensure_producer()  # type: ignore[attr-defined]
        futures = []
        for partition, items in records.items():
            builder = producer.create_batch()
            for key, value in items:
                if builder.append(timestamp=None, key=key, value=value) is None:  # full: send, start another
                    futures.append(await producer.send_batch(builder, topic, partition=partition))
                    builder = producer.create_batch()
                    if builder.append(timestamp=None, key=key, value=value) is None:
                        raise ValueError(f"a changelog record of {len(value)} bytes does not fit an empty batch")
            futures.append(await producer.send_batch(builder, topic, partition=partition))
        return futures


class TableStates:
    """Entity states in a faust table; each change goes to the changelog partition of the
    source record's partition (the table is co-partitioned with events.raw).

    Changes are coalesced per entity per batch: :meth:`put` updates the table at once (the
    batch's next event of the entity sees it) and marks the entity; :meth:`flush`, once per
    batch, sends one changelog record per changed entity, its last state, in whole producer
    batches. Recovery reads the last record per key, so the result is the same as one record
    per event, at a fraction of the bytes (an entity's state is its whole recent window, ~1-3 KB)."""

    def __init__(self, table: Any, writes: ChangelogWrites, sender: ChangelogBatches) -> None:
        self.table = table
        self.writes = writes
        self.sender = sender
        self.dirty: dict[str, int] = {}  # entity key → changelog partition, changed in this batch

    def get(self, entity_id: str) -> Mapping[str, Any] | None:
        value: Mapping[str, Any] | None = self.table.get(entity_id)
        return value

    def put(self, partition: int, entity_id: str, state: dict[str, Any]) -> None:
        # Explicit partition: the agent works on batches, outside faust's per-event context.
        self.table.data[entity_id] = state
        self.dirty[entity_id] = partition

    async def flush(self, encoded: Mapping[str, bytes] | None = None) -> int:
        """Send the batch's changed states to the changelog (their futures go to ``writes``);
        key and value encoded here with orjson, as faust's json codec (the table's) encodes them,
        so recovery reads them as ever."""
        dirty, self.dirty = self.dirty, {}
        data = self.table.data
        by_partition: dict[int, list[tuple[bytes, bytes]]] = {}
        for entity_id, partition in dirty.items():
            value = encoded.get(entity_id) if encoded else None
            if value is None:
                value = orjson.dumps(data[entity_id])
            by_partition.setdefault(partition, []).append((orjson.dumps(entity_id), value))
        if by_partition:
            topic = self.table.changelog_topic.get_topic_name()
            for fut in await self.sender.send(topic, by_partition):
                self.writes.add(fut)
        return len(dirty)


class TableOffsets:
    """Next offset to process per source partition, in a faust table keyed by partition number
    (each written to its own changelog partition, so it moves with the partition)."""

    def __init__(self, table: Any, writes: ChangelogWrites) -> None:
        self.table = table
        self.writes = writes

    def get(self, partition: int) -> int | None:
        value = self.table.get(str(partition))
        return None if value is None else int(value)

    def put(self, partition: int, next_offset: int) -> None:
        self.table.data[str(partition)] = next_offset
        self.writes.add(self.table.send_changelog(partition, str(partition), next_offset))


class HoleReader:
    """Reads offsets of events.raw that faust's consumer did not deliver, straight from the log.

    A plain consumer of its own (no group, committed transactions only, assigned the partitions
    it reads): unlike a seek of faust's consumer, whose fetcher drops re-fetched records below
    its read position, it returns every record in the range that the log still holds."""

    def __init__(self, kafka: KafkaConnection, topic: str, *, max_wait_s: float = 30.0) -> None:
        self.kafka = kafka
        self.topic = topic
        self.max_wait_s = max_wait_s
        self._consumer: AIOKafkaConsumer | None = None

    async def _started(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            consumer = AIOKafkaConsumer(
                **self.kafka.client_kwargs(),
                group_id=None,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                isolation_level="read_committed",
                client_id=f"driftline-{NAME}-holes",
            )
            await consumer.start()
            self._consumer = consumer
        return self._consumer

    async def read(self, holes: Sequence[Hole], *, stopping: Callable[[], bool]) -> list[SourceRecord]:
        """Every record of the holes still in the log (retrying outages until ``stopping``)."""
        records: list[SourceRecord] = await retry_transient(
            lambda: self._read(holes), what="read offset holes", stopping=stopping
        )
        metrics.OFFSET_HOLES.inc(len(holes))
        metrics.OFFSET_HOLE_RECORDS.inc(len(records))
        log.warning(
            "offset_holes_read",
            holes=[(h.partition, h.start, h.end) for h in holes][:10],
            records=len(records),
        )
        return records

    async def _read(self, holes: Sequence[Hole]) -> list[SourceRecord]:
        consumer = await self._started()
        tps = {h.partition: TopicPartition(self.topic, h.partition) for h in holes}
        consumer.assign(list(tps.values()))
        out: list[SourceRecord] = []
        for hole in holes:
            tp = tps[hole.partition]
            consumer.seek(tp, hole.start)
            deadline = time.monotonic() + self.max_wait_s
            while await consumer.position(tp) < hole.end:
                if time.monotonic() > deadline:
                    raise TransientError(f"offsets {hole.start}..{hole.end - 1} of {tp} not readable")
                fetched = await consumer.getmany(tp, timeout_ms=500)
                for rec in fetched.get(tp, []):
                    if hole.start <= rec.offset < hole.end:
                        out.append(
                            SourceRecord(
                                topic=rec.topic,
                                partition=rec.partition,
                                offset=rec.offset,
                                key=rec.key,
                                value=rec.value,
                                timestamp_ms=rec.timestamp,
                                headers=tuple(rec.headers or ()),
                            )
                        )
        return out

    async def close(self) -> None:
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            with contextlib.suppress(Exception):
                await consumer.stop()


class StreamControl:
    """Lets the service stop the agent between batches and see whether it is healthy."""

    def __init__(self) -> None:
        self.stopping = False
        self.idle = asyncio.Event()
        self.idle.set()
        self.finished = False
        self.batches = 0

    async def drain(self, timeout_s: float) -> None:
        """Stop taking batches and wait (bounded) for the one in progress to finish."""
        self.stopping = True
        try:
            await asyncio.wait_for(self.idle.wait(), timeout=timeout_s)
        except TimeoutError:
            log.warning("drain_timeout", timeout_s=timeout_s)


def faust_credentials(kafka: KafkaConnection) -> CredentialsT | None:
    """faust's ``broker_credentials`` for the stack's Kafka connection (None: PLAINTEXT)."""
    if kafka.security_protocol in SASL_PROTOCOLS:
        return faust.SASLCredentials(
            username=kafka.sasl_username,
            password=kafka.sasl_password.get_secret_value() if kafka.sasl_password else None,
            ssl_context=kafka.ssl_context,
            mechanism=kafka.sasl_mechanism,
        )
    if kafka.security_protocol == "SSL":
        return faust.SSLCredentials(kafka.ssl_context)
    return None


def broker_urls(bootstrap_servers: str) -> list[str]:
    return [f"kafka://{hostport.strip()}" for hostport in bootstrap_servers.split(",") if hostport.strip()]


async def source_layout(stack: StackSettings) -> tuple[int, int]:
    """(partitions, replication factor) of events.raw: the state table's changelog mirrors them."""
    topic = stack.topic_prefix + EVENTS_RAW
    admin = AIOKafkaAdminClient(**stack.kafka.client_kwargs(), client_id="driftline-features-admin")
    await start_client(admin.start, stack.kafka, what="kafka admin start")
    try:
        (described,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    partitions = described.get("partitions") or []
    if described.get("error_code") or not partitions:
        raise RuntimeError(f"topic {topic} does not exist: run `driftline stack init`")
    return len(partitions), max(len(p.get("replicas") or [1]) for p in partitions)


def build_stream(
    settings: FeaturesSettings,
    processor: FeatureProcessor,
    control: StreamControl,
    *,
    partitions: int,
    replication_factor: int,
) -> faust.App:
    stack = settings.stack
    app_id = f"{stack.topic_prefix}{NAME}"
    data_dir = settings.data_dir or Path(tempfile.gettempdir()) / "driftline-features" / re.sub(r"[^\w.-]", "_", app_id)
    data_dir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        app_id,
        broker=broker_urls(stack.kafka_bootstrap_servers),
        broker_credentials=faust_credentials(stack.kafka),
        store="memory://",
        web_enabled=False,
        autodiscover=False,
        datadir=str(data_dir),
        topic_partitions=partitions,
        topic_replication_factor=replication_factor,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        # A batch's changelog writes go out together, in large produce batches (the platform's
        # producer settings). Not compressed: aiokafka's lz4 is LZ4HC level 9 (~65 MB/s here), which
        # cost 15% of the service's CPU on ~3 KB entity states (profile in the README).
        producer_linger=0.005,
        producer_max_batch_size=256 * 1024,
        broker_client_id=f"driftline-{NAME}",
        broker_commit_interval=settings.commit_interval_s,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=settings.heartbeat_interval_s,
        broker_rebalance_timeout=settings.rebalance_timeout_s,
        consumer_group_instance_id=settings.group_instance_id or stable_instance_id(NAME, data_dir / "members").id,
        env={},  # configuration comes from pydantic-settings only, not faust's own env names
    )
    use_batch_delivery(app)
    source = app.topic(stack.topic_prefix + EVENTS_RAW, key_serializer="raw", value_serializer="raw")
    writes = ChangelogWrites()
    # Changelogs are compacted; short segments let the broker's cleaner compact all but the last
    # one, so a restart reads about one record per entity plus the last segment's writes rather
    # than every change ever made (a state write per event: recovery time grew with the stream).
    changelog = {
        "segment.ms": str(int(settings.changelog_segment_s * 1000)),
        "min.cleanable.dirty.ratio": "0.1",
    }

    def table(name: str) -> Any:
        return app.Table(name, default=None, partitions=partitions, extra_topic_configs=changelog)

    states = TableStates(table(STATE_TABLE), writes, ChangelogBatches(app))
    guard = OffsetGuard(TableOffsets(table(OFFSETS_TABLE), writes))
    generation: list[int | None] = [None]
    holes = HoleReader(stack.kafka, source.get_topic_name())
    # Next offset per partition whose effects, table changes included, are durable: committed
    # by the timer below, so the group's offsets follow the real progress even where faust's own
    # commit bookkeeping stalls (it commits nothing past an offset it never saw acknowledged).
    durable: dict[int, int] = {}

    async def commit_durable() -> None:
        consumer: Any = app.consumer  # faust's Consumer: its commit bookkeeping is private (pinned in tests)
        topic = source.get_topic_name()
        offsets = {}
        for partition, next_offset in list(durable.items()):
            tp = TP(topic, partition)
            committed = consumer._committed_offset.get(tp)
            if committed is None or next_offset > committed:
                offsets[tp] = next_offset
        if offsets:
            await consumer._commit_offsets(offsets)

    app.timer(interval=settings.commit_interval_s)(commit_durable)

    lag = LagGauge(app_id)  # faust's consumer group is the app id

    async def export_lag() -> None:
        consumer: Any = app.consumer
        topic = source.get_topic_name()

        async def done(_: str, partition: int) -> int | None:
            if partition in durable:
                return durable[partition]
            position: int | None = await consumer.position(TP(topic, partition))
            return position

        try:
            await lag.update(
                [(tp.topic, tp.partition) for tp in consumer.assignment() if tp.topic == topic],
                lambda t, p: consumer.highwater(TP(t, p)),
                done,
            )
        except Exception as exc:  # a metric never stops the stream
            log.warning("consumer_lag_unavailable", group=app_id, error=repr(exc)[:300])

    app.timer(interval=1.0)(export_lag)

    # faust.Stream; typed Any because noack_take yields events while its annotation says values.
    async def compute_vectors(stream: Any) -> None:
        try:
            async for events in stream.noack_take(settings.batch_size, within=settings.batch_wait_s):
                if control.stopping:
                    break  # not acknowledged: processed again by whoever owns the partitions next
                control.idle.clear()
                try:
                    # Records taken before a rebalance belong to a stale generation: the new
                    # assignment re-reads them from the committed offsets; never acknowledge them.
                    current_generation = app.consumer_generation_id
                    if generation[0] != current_generation:
                        generation[0] = current_generation
                        guard.reset()
                        durable.clear()
                    current = [ev for ev in events if ev.message.generation_id == current_generation]
                    records = [_source_record(ev) for ev in current]
                    try:
                        missing = guard.holes(records)
                        if missing:
                            records += await holes.read(missing, stopping=lambda: control.stopping)
                        admitted = guard.admit(records)
                        if admitted:
                            await processor.handle(admitted, states)  # flushes its state changes
                        # Durable now (vectors acknowledged, online store written): remember
                        # where each partition continues, and wait until the table changes and
                        # that position are in the changelog; only then acknowledge.
                        guard.done(admitted)
                        await writes.wait()
                        for rec in admitted:
                            durable[rec.partition] = max(durable.get(rec.partition, 0), rec.offset + 1)
                    except Exception as exc:
                        # Stopping in the middle of an outage, or a changelog write that failed:
                        # nothing of the batch is acknowledged; whoever owns the partitions next
                        # (this worker after a restart) recovers from the changelog and the guard.
                        log.warning("batch_abandoned", error=repr(exc)[:300], size=len(records))
                        break
                    for ev in current:
                        await stream.ack(ev)
                    control.batches += 1
                    _observe_lag(app, current)
                finally:
                    control.idle.set()
        finally:
            control.finished = True
            await holes.close()
            if not control.stopping:
                # The agent gave up (a changelog write failed): end the process, so that the
                # process manager restarts it and the restart recovers from the changelog.
                log.error("stream_agent_stopped_exiting")
                os.kill(os.getpid(), signal.SIGTERM)

    app.agent(source, name="compute-vectors", concurrency=1)(compute_vectors)
    return app


@contextlib.asynccontextmanager
async def running(app: faust.App, control: StreamControl, *, drain_timeout_s: float) -> AsyncIterator[None]:
    """The faust app runs while this is open; on exit the agent stops taking batches and the one
    in progress may finish (``drain_timeout_s``) before faust stops (and commits)."""
    try:
        async with faust_app_running(app):
            try:
                yield
            finally:
                await control.drain(drain_timeout_s)
                # A batch taken while stopping is deliberately left unacknowledged (the next owner
                # of its partitions processes it): faust must commit what was acknowledged and stop,
                # not wait for those records (stream_wait_empty), which would never happen.
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    app.conf.stream_wait_empty = False
    finally:
        log.info("features_stopped")


def _headers(headers: Any) -> tuple[tuple[str, bytes], ...]:
    """A faust message's headers (a list of pairs, or a mapping) as pairs."""
    if not headers:
        return ()
    items = headers if isinstance(headers, list | tuple) else headers.items()  # no ABC check per record
    return tuple((str(k), bytes(v)) for k, v in items)


def _source_record(event: Any) -> SourceRecord:
    msg = event.message
    return SourceRecord(
        topic=msg.topic,
        partition=msg.partition,
        offset=msg.offset,
        key=msg.key,
        value=msg.value,
        timestamp_ms=int((msg.timestamp or 0) * 1000),
        headers=_headers(msg.headers),
    )


def _observe_lag(app: faust.App, events: list[Any]) -> None:
    last: dict[Any, int] = {}
    for ev in events:
        tp = ev.message.tp
        last[tp] = max(last.get(tp, -1), ev.message.offset)
    for tp, offset in last.items():
        with contextlib.suppress(Exception):  # no fetch position yet: skip this time
            highwater = app.consumer.highwater(tp)
            if highwater is not None:
                metrics.CONSUMER_LAG.labels(str(tp.partition)).set(max(0, highwater - offset - 1))


async def readiness(app: faust.App, control: StreamControl) -> None:
    if app.crashed or control.finished:
        raise RuntimeError(f"stream stopped: {app.crash_reason!r}" if app.crashed else "stream agent stopped")
    if not app.started:
        raise RuntimeError("stream not started")
