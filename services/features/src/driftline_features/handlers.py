"""The features service's logic: raw events in, feature vectors out (Kafka and the online store).

Plain async code with its dependencies passed in, so it runs with fakes in unit tests; the faust
wiring (stream.py) only hands it batches of records and acknowledges them once this returns.

One batch: decode each record into a :class:`~driftline.records.RawEvent` (undecodable →
events.dlq), compute its :class:`~driftline.records.FeatureVectorComputed` (raw and derived
features from the payload, windowed features from the entity's state, which is updated), send
the vectors, write them to the online store, and wait for the broker's acknowledgements. Only
then does the caller acknowledge the records, so an offset is committed only after its effects
are durable. A failed batch is simply run again: the entity state recognises events it already
holds (by event id) and re-emits their stored values, so a retry, like a replay after a crash,
is an upsert and never a double count.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import orjson
from aiokafka.structs import ConsumerRecord

from driftline import tracing
from driftline.catalog import EVENTS_RAW, FEATURES_VECTORS
from driftline.events import Envelope, as_utc, derived_event_id
from driftline.logging import bind_event, get_logger
from driftline.project import Project
from driftline.records import FeatureVectorComputed, RawEvent
from driftline.retry import Backoff, PoisonRecord, is_transient, retry_transient
from driftline.serde import DecodeError
from driftline_features import metrics
from driftline_features.store import VectorRow
from driftline_ml.featuredefs import FeatureSet
from driftline_ml.online import FeatureSets, StateRow

log = get_logger(__name__)

YIELD_EVERY = 25  # records computed between two turns of the event loop (~6 ms of CPU)


@dataclass(frozen=True, slots=True)
class SourceRecord:
    """One record of events.raw as the stream delivered it."""

    topic: str  # physical topic name (with the namespace prefix)
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int
    headers: tuple[tuple[str, bytes], ...] = ()  # the record's Kafka headers (its traceparent)


class EntityStates(Protocol):
    """Per-entity window state (a faust table in the service; a dict in tests)."""

    def get(self, entity_id: str) -> Mapping[str, Any] | None: ...

    def put(self, partition: int, entity_id: str, state: dict[str, Any]) -> None: ...

    async def flush(self, encoded: Mapping[str, bytes] | None = None) -> int:
        """Persist the changes made since the last flush (the service: to the changelog, one record
        per changed entity); called once a batch is computed. ``encoded``: entity states already
        encoded as JSON (orjson), by key, to reuse. Returns how many entities changed."""
        ...


class Decoder(Protocol):
    async def decode_many(
        self, items: Sequence[bytes | None], topic: str | None = None
    ) -> list[tuple[dict[str, Any], int] | DecodeError]: ...


class Producer(Protocol):
    """The part of driftline.producer.EventProducer used here."""

    name: str

    def envelope(self, **kwargs: Any) -> Envelope: ...

    async def send_many(self, topic: str, records: Sequence[FeatureVectorComputed]) -> list[asyncio.Future[Any]]: ...

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
    ) -> asyncio.Future[Any]: ...


class Store(Protocol):
    async def write(self, rows: list[VectorRow], states: Sequence[StateRow] = ()) -> None: ...

    async def find(self, event_ids: list[str]) -> dict[str, tuple[dict[str, Any], bool]]: ...


@dataclass
class Computed:
    """One event's vector, before it is sent and stored."""

    vector: FeatureVectorComputed
    row: VectorRow
    late: bool
    duplicate: bool
    late_for: tuple[str, ...]
    watermark_ms: int | None
    features: FeatureSet | None = None
    state: StateRow | None = None  # the entity's window state after the event (None: unchanged)


@dataclass
class BatchResult:
    computed: int = 0
    duplicates: int = 0
    late: int = 0
    dead_lettered: int = 0


@dataclass
class Prepared:
    """A batch computed and sent, not yet durable."""

    records: list[SourceRecord]
    rows: list[VectorRow] = field(default_factory=list)
    states: list[StateRow] = field(default_factory=list)
    futures: list[asyncio.Future[Any]] = field(default_factory=list)
    result: BatchResult = field(default_factory=BatchResult)


class FeatureProcessor:
    """Computes, publishes and stores the vectors of a batch of raw events."""

    def __init__(
        self,
        *,
        decoder: Decoder,
        producer: Producer,
        store: Store,
        group: str,
        max_attempts: int = 3,
        stopping: Callable[[], bool] = lambda: False,
        sets: FeatureSets | None = None,
        project: Project | None = None,
        features: FeatureSet | None = None,
        chunk_size: int = 0,
    ) -> None:
        """``sets``: every project's feature set (the service's, kept up to date from the projects
        topic); or one ``project`` with its ``features`` (tests). ``chunk_size``: records per
        chunk of a batch, the next computed while the last is written (0: the batch at once)."""
        if sets is None:
            if project is None or features is None:
                raise ValueError("give sets, or project and features")
            sets = FeatureSets.single(project.event.type, features)
        self.sets = sets
        self.decoder = decoder
        self.producer = producer
        self.store = store
        self.source = f"consumer:{group}"
        self.group = group
        self.max_attempts = max_attempts
        self.chunk_size = chunk_size
        self.stopping = stopping
        self._function_errors_seen: dict[str, int] = {}

    # -- the batch, with retries and poison isolation -------------------------------------------

    async def handle(self, records: Sequence[SourceRecord], states: EntityStates) -> BatchResult:
        """Process a batch until its effects are durable. Raises only when stopping mid-outage
        (the records are then not acknowledged and will be processed again)."""
        started = time.perf_counter()
        backoff = Backoff()
        while True:
            try:
                result = await self._process(records, states)
                break
            except Exception as exc:
                if is_transient(exc):
                    if self.stopping():
                        raise
                    delay = backoff.next_delay()
                    log.warning("batch_transient_failure", error=repr(exc)[:300], retry_in_s=round(delay, 2))
                    metrics.RETRIES.inc()
                    await asyncio.sleep(delay)
                    continue
                log.warning("batch_failed_isolating", error=repr(exc)[:300], size=len(records))
                result = await self._isolate(records, states)
                break
        metrics.BATCH_SECONDS.observe(time.perf_counter() - started)
        metrics.observe_batch(result.computed + result.duplicates + result.dead_lettered)
        self._report_function_errors()
        return result

    async def _isolate(self, records: Sequence[SourceRecord], states: EntityStates) -> BatchResult:
        """Run the records one by one; one that keeps failing goes to the DLQ."""
        total = BatchResult()
        for rec in records:
            attempts = 0
            backoff = Backoff()
            while True:
                attempts += 1
                try:
                    one = await self._process([rec], states)
                    break
                except Exception as exc:
                    if is_transient(exc):
                        if self.stopping():
                            raise
                        attempts -= 1  # outages do not count against the record
                    elif attempts >= self.max_attempts:
                        log.error(
                            "record_failed_dead_lettering",
                            error=repr(exc)[:500],
                            partition=rec.partition,
                            offset=rec.offset,
                        )
                        await self._dead_letter_now(rec, f"handler error: {exc!r}", "handler_error", None, attempts)
                        one = BatchResult(dead_lettered=1)
                        break
                    await asyncio.sleep(backoff.next_delay())
            _add(total, one)
        return total

    # -- one pass over a batch -------------------------------------------------------------------

    async def _process(self, records: Sequence[SourceRecord], states: EntityStates) -> BatchResult:
        """One pass over a batch, in chunks of ``chunk_size`` records: while a chunk's online-store
        write and broker acknowledgements are awaited, the next chunk is decoded, computed and
        sent (the service waited on PostgreSQL for ~40% of a batch otherwise); the entity states go
        with the last chunk, one per entity of the batch. The batch stays the unit of
        acknowledgement and of retry: it is durable when every chunk is, and a failed
        chunk fails the pass (the caller runs the whole batch again, which the entity states
        recognise as re-deliveries)."""
        size = self.chunk_size if self.chunk_size > 0 else len(records)
        chunks = [records[i : i + size] for i in range(0, len(records), size)] or [records]
        total = BatchResult()
        writing: asyncio.Task[BatchResult] | None = None
        batch_states: dict[str, StateRow] = {}  # each entity's last state, stored with the last chunk
        try:
            for n, chunk in enumerate(chunks, start=1):
                prepared = await self._prepare(chunk, states, batch_states, last_chunk=n == len(chunks))
                if writing is not None:
                    _add(total, await writing)
                writing = asyncio.ensure_future(self._complete(prepared))
            assert writing is not None
            _add(total, await writing)
            writing = None
        finally:
            if writing is not None and not writing.done():  # the pass failed: no write left running
                writing.cancel()
                with contextlib.suppress(BaseException):
                    await writing
        return total

    async def _prepare(
        self,
        records: Sequence[SourceRecord],
        states: EntityStates,
        batch_states: dict[str, StateRow],
        *,
        last_chunk: bool = True,
    ) -> Prepared:
        """Decode, compute (updating entity states) and send; nothing is durable yet. The entity
        states changed go into ``batch_states``; the batch's last chunk takes all of them (one per
        entity: the online store's rows and the changelog's records)."""
        prepared = Prepared(records=list(records))
        result = prepared.result
        computed: list[Computed] = []
        traced: list[tracing.Consumed] = []
        # One log context per batch (binding per record costs more than computing a vector);
        # per-event log lines name their event explicitly.
        if records:
            bind_event(topic=EVENTS_RAW, event_id=None, correlation_id=None, batch=len(records))
        # One decode call for the batch: writer schemas looked up once, no await per record.
        decoded = await retry_transient(
            functools.partial(self.decoder.decode_many, [rec.value for rec in records], EVENTS_RAW),
            what="decode",
            stopping=self.stopping,
        )
        for i, (rec, item) in enumerate(zip(records, decoded, strict=True)):
            if i % YIELD_EVERY == YIELD_EVERY - 1:
                # Let the previous chunk's store write and acknowledgements move on: its
                # round trips otherwise wait for the loop until this chunk is computed.
                await asyncio.sleep(0)
            raw: RawEvent | None = None
            try:
                if isinstance(item, DecodeError):
                    raise item
                raw = raw_event(item[0])
                traced.append(tracing.Consumed(rec.topic, rec.partition, rec.offset, rec.headers, raw.event_id))
                computed.append(self.compute(rec, raw, states))
            except DecodeError as exc:
                prepared.futures.append(await self._dead_letter(rec, str(exc), "decode_error", None, 1))
                result.dead_lettered += 1
            except PoisonRecord as exc:
                correlation_id = raw.correlation_id if raw is not None else None
                prepared.futures.append(await self._dead_letter(rec, exc.reason, exc.error_type, correlation_id, 1))
                result.dead_lettered += 1
        if computed:  # a gauge: the batch's last event says it
            metrics.EVENT_TIME_LAG.set(max(0.0, time.time() - computed[-1].vector.event_time.timestamp()))
        await self._recognise_old_redeliveries(computed)
        # The vectors as whole producer batches (one per partition), acknowledged in bulk below;
        # the batch's state changes go to the changelog now too, so both are in flight during
        # the online-store write.
        with tracing.processing(traced, self.group):  # each vector continues its event's trace
            prepared.futures += await self.producer.send_many(FEATURES_VECTORS, [c.vector for c in computed])
        # One window state per entity for the online store: its last (it holds every event of
        # the batch), at the greatest source offset of the entity in the batch; encoded once, for
        # the store and for the changelog.
        for c in computed:
            if c.state is not None:
                before = batch_states.get(c.state.key)
                if before is not None and before.source_offset > c.state.source_offset:
                    batch_states[c.state.key] = replace(c.state, source_offset=before.source_offset)
                else:
                    batch_states[c.state.key] = c.state
        if last_chunk:
            prepared.states = [replace(row, json=orjson.dumps(row.state)) for row in batch_states.values()]
            await states.flush({row.key: row.json for row in prepared.states if row.json is not None})
        for c in computed:
            prepared.rows.append(c.row)
            if c.duplicate:
                result.duplicates += 1
            else:
                result.computed += 1
                if c.late:
                    result.late += 1
                    log.info(
                        "late_event",
                        event_id=c.row.source_event_id,
                        correlation_id=c.row.correlation_id,
                        partition=c.row.source_partition,
                        offset=c.row.source_offset,
                        entity_id=c.row.entity_id,
                        event_time=c.row.event_time.isoformat(),
                        watermark_ms=c.watermark_ms,
                        late_for=list(c.late_for),
                    )
        return prepared

    async def _complete(self, prepared: Prepared) -> BatchResult:
        """Make a prepared batch durable: the online-store write and the broker's acknowledgements."""
        started = time.perf_counter()
        await self.store.write(prepared.rows, prepared.states)
        metrics.STORE_WRITE_SECONDS.observe(time.perf_counter() - started)
        if prepared.futures:
            await asyncio.gather(*prepared.futures)
        result = prepared.result
        metrics.EVENTS.labels("computed").inc(result.computed)
        metrics.EVENTS.labels("duplicate").inc(result.duplicates)
        metrics.EVENTS.labels("dead_lettered").inc(result.dead_lettered)
        metrics.LATE_EVENTS.inc(result.late)
        return result

    async def _recognise_old_redeliveries(self, computed: list[Computed]) -> None:
        """A late event that its entity's state does not remember may be a re-delivery of an event
        computed long ago (the state forgets beyond the window horizon and its last few events).
        The online store remembers longer: if the vector is there, send exactly that again, so
        an event id never carries two different vectors."""
        candidates = [c for c in computed if c.late and not c.duplicate]
        if not candidates:
            return
        known = await self.store.find([c.row.event_id for c in candidates])
        for c in candidates:
            hit = known.get(c.row.event_id)
            if hit is None:
                continue
            features, late = hit
            assert c.features is not None
            ordered = {name: features.get(name) for name in c.features.names}
            c.vector = replace(c.vector, features=ordered, late=late)
            c.row = replace(c.row, features=ordered, late=late)
            c.late = late
            c.duplicate = True

    def compute(self, rec: SourceRecord, raw: RawEvent, states: EntityStates) -> Computed:
        """The vector of one raw event; updates the entity's state."""
        raw_id = raw.event_id
        pf = self.sets.of(raw)
        if pf is None:
            known = ", ".join(sorted(self.sets.by_type)) or "none"
            raise PoisonRecord(
                f"event_type {raw.event_type!r} (project {raw.project!r}) is no project's event type (known: {known})",
                "unknown_event_type",
            )
        feature_set = pf.features
        entity_id = raw.entity_id
        event_time = as_utc(raw.event_time)
        state = None
        key = pf.state_key(entity_id)
        computed = pf.compute(raw, states.get(key) if feature_set.stateful else None)
        windowed = computed.windowed
        if computed.new_state is not None:
            states.put(rec.partition, key, computed.new_state)
            state = StateRow(key, computed.new_state, rec.partition, rec.offset)
        features = computed.features
        version = pf.version
        vector_id = derived_event_id(raw_id, version)
        late = bool(windowed and windowed.late)
        vector = FeatureVectorComputed(
            **self.producer.envelope(cause=raw, event_time=event_time, event_id=vector_id),
            source_event_id=raw_id,
            entity_id=entity_id,
            feature_set_version=version,
            features=features,
            late=late,
            project=pf.project,
        )
        return Computed(
            vector=vector,
            row=VectorRow.of(vector, source_partition=rec.partition, source_offset=rec.offset),
            late=late,
            duplicate=bool(windowed and windowed.duplicate),
            late_for=windowed.late_for if windowed else (),
            watermark_ms=windowed.watermark_ms if windowed else None,
            features=feature_set,
            state=state,
        )

    # -- dead letters ----------------------------------------------------------------------------

    async def _dead_letter(
        self, rec: SourceRecord, reason: str, error_type: str, correlation_id: str | None, attempts: int
    ) -> asyncio.Future[Any]:
        log.warning(
            "record_dead_lettered",
            reason=reason[:300],
            error_type=error_type,
            partition=rec.partition,
            offset=rec.offset,
            correlation_id=correlation_id,
        )
        fut: asyncio.Future[Any] = await retry_transient(
            lambda: self.producer.dead_letter(
                source=self.source,
                reason=reason,
                error_type=error_type,
                original=rec.value or b"",
                record=_consumer_record(rec),
                correlation_id=correlation_id,
                attempts=attempts,
            ),
            what="dead letter",
        )
        return fut

    async def _dead_letter_now(
        self, rec: SourceRecord, reason: str, error_type: str, correlation_id: str | None, attempts: int
    ) -> None:
        """Dead-letter one record and wait for the broker's acknowledgement (outages retried)."""
        backoff = Backoff()
        while True:
            try:
                await (await self._dead_letter(rec, reason, error_type, correlation_id, attempts))
                break
            except Exception as exc:
                if not is_transient(exc) or self.stopping():
                    raise
                await asyncio.sleep(backoff.next_delay())
        metrics.EVENTS.labels("dead_lettered").inc()

    def _report_function_errors(self) -> None:
        for pf in self.sets.all():
            prefix = f"{pf.project}/" if pf.project else ""
            for name, count in pf.features.function_errors.items():
                key = prefix + name
                new = count - self._function_errors_seen.get(key, 0)
                if new > 0:
                    metrics.FUNCTION_ERRORS.labels(name).inc(new)
                    log.warning("derived_function_failed", project=pf.project, feature=name, failures=new)
                    self._function_errors_seen[key] = count


def _add(total: BatchResult, part: BatchResult) -> None:
    total.computed += part.computed
    total.duplicates += part.duplicates
    total.late += part.late
    total.dead_lettered += part.dead_lettered


def raw_event(value: Mapping[str, Any]) -> RawEvent:
    """The typed record of a decoded events.raw value; one that does not fit is undecodable."""
    try:
        return RawEvent.from_avro(value)
    except (KeyError, TypeError) as exc:
        raise DecodeError(f"record does not fit RawEvent: missing or wrong field {exc}") from exc


def _consumer_record(rec: SourceRecord) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic=rec.topic,
        partition=rec.partition,
        offset=rec.offset,
        timestamp=rec.timestamp_ms,
        timestamp_type=0,
        key=rec.key,
        value=rec.value or b"",
        checksum=None,
        serialized_key_size=len(rec.key or b""),
        serialized_value_size=len(rec.value or b""),
        headers=(),
    )
