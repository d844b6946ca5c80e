"""The features processor with fakes: vector contract, DLQ, retries and idempotency."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from driftline.catalog import EVENTS_RAW
from driftline.events import derived_event_id, envelope
from driftline.project import load_project
from driftline.records import FeatureVectorComputed, RawEvent
from driftline.retry import TransientError
from driftline_features.handlers import YIELD_EVERY, FeatureProcessor, SourceRecord
from driftline_features.store import VectorRow
from driftline_ml.featuredefs import FeatureSet
from driftline_ml.online import StateRow
from tests.fakes import FakeProducer, JsonSerde
from tests.support import ROOT

PROJECT = load_project()
T0 = datetime(2025, 1, 1, 10, 0, tzinfo=UTC)


def raw_event(entity: str, minute: int, loan: float, **overrides: Any) -> RawEvent:
    payload = {
        "customer_id": entity,
        "salary": 50_000.0,
        "commission": 0.0,
        "age": 40,
        "elevel": 2,
        "car": 3,
        "zipcode": 4,
        "hvalue": 100_000.0,
        "hyears": 25,
        "loan": loan,
    }
    raw = RawEvent(
        **envelope("ingestion", event_time=T0 + timedelta(minutes=minute)),
        event_type="loan_application",
        entity_id=entity,
        payload=payload,
        source="http",
    )
    return replace(raw, **overrides)


SERDE = JsonSerde()  # the processor's decoder: JSON instead of Avro


def encode(value: RawEvent | dict[str, Any]) -> bytes:
    return SERDE.encode(EVENTS_RAW, value.to_avro() if isinstance(value, RawEvent) else value)


class FakeStore:
    def __init__(self, fail_times: int = 0, error: Exception | None = None) -> None:
        self.rows: dict[str, VectorRow] = {}
        self.states: dict[str, StateRow] = {}
        self.writes = 0
        self.state_batches: list[list[str]] = []  # the state keys of each write
        self.fail_times = fail_times
        self.error = error or TransientError("postgres down")

    async def write(self, rows: list[VectorRow], states: Sequence[StateRow] = ()) -> None:
        self.writes += 1
        self.state_batches.append([s.key for s in states])
        if self.fail_times:
            self.fail_times -= 1
            raise self.error
        for r in rows:
            self.rows.setdefault(r.event_id, r)
        for s in states:
            self.states[s.key] = s

    async def find(self, event_ids: list[str]) -> dict[str, tuple[dict[str, Any], bool]]:
        return {e: (dict(self.rows[e].features), self.rows[e].late) for e in event_ids if e in self.rows}


class DictStates:
    def __init__(self) -> None:
        self.data: dict[str, dict[str, Any]] = {}
        self.changelog: list[tuple[int, str]] = []
        self.flushes = 0

    def get(self, entity_id: str) -> dict[str, Any] | None:
        return self.data.get(entity_id)

    def put(self, partition: int, entity_id: str, state: dict[str, Any]) -> None:
        self.data[entity_id] = state
        self.changelog.append((partition, entity_id))

    async def flush(self, encoded: Mapping[str, bytes] | None = None) -> int:
        self.flushes += 1
        return 0


def processor(
    store: FakeStore | None = None, producer: FakeProducer | None = None, keep_last: int = 32, **kw: Any
) -> FeatureProcessor:
    return FeatureProcessor(
        project=PROJECT,
        features=FeatureSet(PROJECT.features, keep_last=keep_last),
        decoder=SERDE,
        producer=producer or FakeProducer(),
        store=store or FakeStore(),
        group="t.features",
        **kw,
    )


def records(*values: bytes, partition: int = 2, start: int = 0) -> list[SourceRecord]:
    return [SourceRecord("t.events.raw", partition, start + i, b"k", v, 0) for i, v in enumerate(values)]


@pytest.fixture(autouse=True)
def _fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    from driftline.retry import Backoff

    monkeypatch.setattr(Backoff, "next_delay", lambda self: 0.0)


async def test_vector_follows_the_contract() -> None:
    producer, store, states = FakeProducer(), FakeStore(), DictStates()
    raw = raw_event("c1", 5, 1000.0)
    await processor(store, producer).handle(records(encode(raw)), states)
    (vector,) = producer.records(FeatureVectorComputed)
    assert vector.event_id == derived_event_id(raw.event_id, "1")
    assert vector.source_event_id == raw.event_id
    assert vector.correlation_id == raw.correlation_id
    assert vector.causation_id == raw.event_id
    assert vector.event_time == raw.event_time
    assert vector.entity_id == "c1" and vector.feature_set_version == "1" and vector.late is False
    assert list(vector.features) == PROJECT.features.names
    assert vector.features["income"] == 50_000.0 and vector.features["elevel"] == 2.0
    assert vector.features["applications_1h"] == 1.0 and vector.features["loan_mean_1h"] == 1000.0
    row = store.rows[vector.event_id]
    assert (row.source_partition, row.source_offset, row.features) == (2, 0, vector.features)
    assert states.changelog == [(2, "c1")]  # state change sent to the source record's partition


async def test_the_online_store_gets_each_entitys_state_and_computing_from_it_gives_the_streams_vector() -> None:
    """What POST /v1/predict does for a raw event (deployment: the entity's state from the online
    store, folded with the event by the same code) gives the vector the stream then computes."""
    producer, store, states = FakeProducer(), FakeStore(), DictStates()
    p = processor(store, producer)
    await p.handle(records(*(encode(raw_event("c1", m, 100.0 * (m + 1))) for m in (0, 10, 20))), states)
    await p.handle(records(encode(raw_event("c2", 3, 7.0)), start=3), states)
    assert set(store.states) == {"c1", "c2"}
    stored = store.states["c1"]
    assert (stored.source_partition, stored.source_offset) == (2, 2)  # the entity's last event in the batch
    assert stored.state == states.data["c1"]
    nxt = raw_event("c1", 30, 1000.0)
    (pf,) = p.sets.all()
    served = pf.compute(nxt, store.states["c1"].state)
    assert store.states["c1"].state == states.data["c1"]  # computing does not change the state
    await p.handle(records(encode(nxt), start=4), states)
    streamed = producer.records(FeatureVectorComputed)[-1]
    assert served.features == streamed.features
    assert streamed.features["applications_1h"] == 4.0 and streamed.features["loan_mean_1h"] == 1075.0


@pytest.mark.parametrize("chunk_size", [0, 2])
async def test_a_batch_writes_one_state_per_entity_its_last_at_its_greatest_offset(chunk_size: int) -> None:
    store, states = FakeStore(), DictStates()
    batch = records(*(encode(raw_event(e, m, 10.0 * m)) for m, e in enumerate(["c1", "c2", "c1", "c1", "c2"])))
    p = processor(store, chunk_size=chunk_size)
    await p.handle([batch[1], batch[0], batch[3], batch[2], batch[4]], states)  # c1: 0, 3, 2
    assert store.state_batches[:-1] == [[]] * (store.writes - 1)  # chunks before the last: vectors only
    assert sorted(store.state_batches[-1]) == ["c1", "c2"]
    c1 = store.states["c1"]
    assert c1.source_offset == 3  # the greatest, although offset 2 came last
    assert c1.state == states.data["c1"] and len(c1.state["events"]) == 3  # the state after all three


async def test_a_redelivered_event_is_reemitted_with_the_same_values_and_not_counted_twice() -> None:
    producer, states = FakeProducer(), DictStates()
    p = processor(producer=producer)
    a, b = raw_event("c1", 5, 100.0), raw_event("c1", 10, 300.0)
    await p.handle(records(encode(a), encode(b)), states)
    await p.handle(records(encode(a), encode(raw_event("c1", 20, 500.0)), start=2), states)
    vectors = producer.records(FeatureVectorComputed)
    assert vectors[2].event_id == vectors[0].event_id
    assert vectors[2].features == vectors[0].features
    assert vectors[3].features["applications_1h"] == 3.0  # a, b and itself: a once
    assert vectors[3].features["loan_mean_1h"] == 300.0


async def test_late_events_are_flagged_and_do_not_update_windows() -> None:
    producer, states = FakeProducer(), DictStates()
    p = processor(producer=producer)
    await p.handle(records(*(encode(raw_event("c1", m, 100.0)) for m in (0, 50))), states)
    await p.handle(records(encode(raw_event("c1", 40, 999.0)), start=2), states)  # 40 < 50 - 5: late
    await p.handle(records(encode(raw_event("c1", 55, 100.0)), start=3), states)
    late, after = producer.records(FeatureVectorComputed)[2:]
    assert late.late is True
    assert late.features["loan_mean_1h"] == 100.0  # the window as it stood at 10:40, without itself
    assert after.features["loan_mean_1h"] == 100.0 and after.features["applications_1h"] == 3.0


async def test_poison_records_go_to_the_dlq_and_the_rest_is_processed() -> None:
    producer, store = FakeProducer(), FakeStore()
    other = raw_event("c2", 1, 1.0, event_type="something_else")
    await processor(store, producer).handle(
        records(b"bad", encode(other), encode(raw_event("c1", 1, 1.0))), DictStates()
    )
    dead = producer.dead
    assert [d["error_type"] for d in dead] == ["decode_error", "unknown_event_type"]
    assert dead[0]["original"] == b"bad" and dead[0]["record"].offset == 0
    assert dead[1]["correlation_id"] == other.correlation_id
    assert len(producer.records(FeatureVectorComputed)) == 1 and len(store.rows) == 1


async def test_a_record_that_does_not_fit_raw_event_is_undecodable() -> None:
    producer = FakeProducer()
    value = raw_event("c1", 1, 1.0).to_avro()
    del value["entity_id"]
    await processor(producer=producer).handle(records(encode(value), encode(raw_event("c1", 2, 1.0))), DictStates())
    (dead,) = producer.dead
    assert dead["error_type"] == "decode_error" and "entity_id" in dead["reason"] and dead["record"].offset == 0
    assert len(producer.records(FeatureVectorComputed)) == 1


async def test_an_outage_retries_the_batch_without_double_counting() -> None:
    producer, store, states = FakeProducer(), FakeStore(fail_times=2), DictStates()
    evs = [raw_event("c1", m, 100.0 * (m + 1)) for m in range(3)]
    await processor(store, producer).handle(records(*map(encode, evs)), states)
    assert store.writes == 3
    stored = sorted(store.rows.values(), key=lambda r: r.event_time)
    assert [r.features["applications_1h"] for r in stored] == [1.0, 2.0, 3.0]
    assert [r.features["loan_mean_1h"] for r in stored] == [100.0, 150.0, 200.0]
    # Every attempt emitted the same vectors (downstream upserts them by event_id).
    by_id: dict[str, list[dict[str, Any]]] = {}
    for v in producer.records(FeatureVectorComputed):
        by_id.setdefault(v.event_id, []).append(v.features)
    assert len(by_id) == 3 and all(len(v) == 3 and v[0] == v[1] == v[2] for v in by_id.values())


async def test_stopping_during_an_outage_gives_up_without_acknowledging() -> None:
    store = FakeStore(fail_times=1000)
    with pytest.raises(TransientError):
        await processor(store, stopping=lambda: True).handle(records(encode(raw_event("c1", 1, 1.0))), DictStates())


async def test_a_record_that_keeps_failing_is_isolated_and_dead_lettered() -> None:
    producer = FakeProducer()
    p = processor(producer=producer)
    (pf,) = p.sets.all()
    fs = pf.features
    original_row = fs.row

    def row(payload: Any) -> Any:
        if payload.get("loan") == 13.0:
            raise ValueError("bug for this payload")
        return original_row(payload)

    fs.row = row  # type: ignore[method-assign]
    await p.handle(records(*(encode(raw_event("c1", m, float(m + 12))) for m in range(3))), DictStates())
    (dead,) = producer.dead
    assert dead["error_type"] == "handler_error" and dead["record"].offset == 1
    vectors = {v.event_id: v for v in producer.records(FeatureVectorComputed)}
    assert len(vectors) == 2


async def test_a_redelivery_the_state_forgot_gets_the_stored_vector_again() -> None:
    producer, store, states = FakeProducer(), FakeStore(), DictStates()
    p = processor(store, producer, keep_last=0)
    old = raw_event("c1", 0, 100.0)
    await p.handle(records(encode(old), encode(raw_event("c1", 10, 300.0))), states)
    await p.handle(records(encode(raw_event("c1", 300, 50.0)), start=2), states)  # hours later: "old" forgotten
    await p.handle(records(encode(old), start=3), states)
    first, *_, again = producer.records(FeatureVectorComputed)
    assert again.event_id == first.event_id
    assert again.features == first.features and again.late is False
    assert len(store.rows) == 3


def two_projects() -> Any:
    """The loan project and the machine-health example, as the projects topic holds them."""
    from driftline.projects import Definition, ProjectBook, applied_record, plan

    book = ProjectBook()
    for path in ("examples/loan_approval/project.yaml", "examples/machine_health/project.yaml"):
        d = Definition.from_file(ROOT / path)
        book.take(applied_record(d, plan(d, None), producer="t", applied_by="t"))
    return book


def reading(entity: str, minute: int, vibration: float) -> RawEvent:
    return RawEvent(
        **envelope("ingestion", event_time=T0 + timedelta(minutes=minute)),
        event_type="machine_reading",
        entity_id=entity,
        payload={
            "machine_id": entity,
            "temperature": 60.0,
            "vibration": vibration,
            "pressure": 100.0,
            "rpm": 1000.0,
            "line": 1,
        },
        source="http",
        project="machine-health",
    )


async def test_each_project_computes_its_own_feature_set_and_windows() -> None:
    from driftline_ml.online import FeatureSets

    sets = FeatureSets()
    sets.update(two_projects().values())
    producer = FakeProducer()
    p = FeatureProcessor(sets=sets, decoder=SERDE, producer=producer, store=FakeStore(), group="t.features")
    states = DictStates()
    # The same entity id in both projects, and an event of no project's type.
    batch = [
        raw_event("e1", 0, 100.0),
        reading("e1", 1, 2.0),
        reading("e1", 2, 4.0),
        raw_event("e1", 3, 300.0),
        replace(raw_event("e1", 4, 1.0), event_type="parcel_scan"),
    ]
    await p.handle(records(*(encode(r) for r in batch)), states)
    vectors = producer.records(FeatureVectorComputed)
    assert [v.project for v in vectors] == ["loan-approval", "machine-health", "machine-health", "loan-approval"]
    machine = [v for v in vectors if v.project == "machine-health"]
    assert set(machine[0].features) == set(sets.by_project["machine-health"].features.names)
    assert machine[1].features["vibration_mean_30m"] == pytest.approx(3.0)  # its own two readings only
    loans = [v for v in vectors if v.project == "loan-approval"]
    assert loans[1].features["applications_1h"] == 2  # the loan events only
    assert {v.feature_set_version for v in vectors} == {"1"}
    assert len(states.data) == 2  # one window state per (project, entity)
    (dead,) = producer.dead
    assert dead["error_type"] == "unknown_event_type" and "parcel_scan" in dead["reason"]


async def test_state_changes_are_flushed_once_per_batch_before_the_store_write() -> None:
    states = DictStates()
    flushes_at_write: list[int] = []

    class WatchingStore(FakeStore):
        async def write(self, rows: list[VectorRow], window_states: Sequence[StateRow] = ()) -> None:
            flushes_at_write.append(states.flushes)
            await super().write(rows, window_states)

    events = [raw_event("c1", m, 100.0 * m) for m in range(3)] + [raw_event("c2", 1, 5.0)]
    await processor(WatchingStore()).handle(records(*(encode(e) for e in events)), states)
    assert len(states.changelog) == 4  # every event changed its entity's state...
    assert states.flushes == 1  # ...and the batch flushed them once,
    assert flushes_at_write == [1]  # before the online-store write (in flight alongside it)


class BlockingStore(FakeStore):
    """A store whose first write waits until released: what was sent meanwhile shows the overlap."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.sent_during_first_write: int | None = None
        self.producer: FakeProducer | None = None

    async def write(self, rows: list[VectorRow], states: Sequence[StateRow] = ()) -> None:
        if self.writes == 0:
            self.writes += 1
            await self.release.wait()
            assert self.producer is not None
            self.sent_during_first_write = len(self.producer.records(FeatureVectorComputed))
            for r in rows:
                self.rows.setdefault(r.event_id, r)
            return
        await super().write(rows, states)


async def test_a_batch_in_chunks_computes_the_next_chunk_while_the_last_is_written() -> None:
    producer, store, states = FakeProducer(), BlockingStore(), DictStates()
    store.producer = producer
    loop = asyncio.get_running_loop()
    loop.call_later(0.2, store.release.set)
    raws = [raw_event(f"c{i % 3}", i, 10.0 * i) for i in range(5)]
    result = await processor(store, producer, chunk_size=2).handle(records(*map(encode, raws)), states)
    assert result.computed == 5
    # chunk 2 computed and sent while chunk 1 was being written (one after the other: 2)
    assert store.sent_during_first_write == 4
    assert store.writes == 3 and len(store.rows) == 5


class RoundTripStore(FakeStore):
    """A store whose write takes several turns of the event loop, as a PostgreSQL write's round
    trips do; it notes how many vectors had been computed when each write finished."""

    def __init__(self, computed: list[int]) -> None:
        super().__init__()
        self.computed = computed
        self.computed_at_end: list[int] = []

    async def write(self, rows: list[VectorRow], states: Sequence[StateRow] = ()) -> None:
        for _ in range(2):
            await asyncio.sleep(0)
        await super().write(rows, states)
        self.computed_at_end.append(self.computed[0])


async def test_a_chunk_s_write_moves_on_while_the_next_chunk_is_computed() -> None:
    computed = [0]
    store, states = RoundTripStore(computed), DictStates()
    p = processor(store, chunk_size=YIELD_EVERY * 4)
    compute = p.compute

    def counting(*args: Any) -> Any:
        computed[0] += 1
        return compute(*args)

    p.compute = counting  # type: ignore[method-assign]
    raws = [raw_event(f"c{i % 7}", i, 1.0 * i) for i in range(YIELD_EVERY * 8)]
    await p.handle(records(*map(encode, raws)), states)
    # the first chunk's write ended while the second chunk was being computed, not after it
    first = store.computed_at_end[0]
    assert YIELD_EVERY * 4 < first < YIELD_EVERY * 8, store.computed_at_end


async def test_a_failed_chunk_runs_the_whole_batch_again_with_the_same_vectors() -> None:
    producer, store, states = FakeProducer(), FakeStore(), DictStates()
    raws = [raw_event(f"c{i % 2}", i, 10.0 * i) for i in range(5)]

    class FailSecond(FakeStore):
        async def write(self, rows: list[VectorRow], states: Sequence[StateRow] = ()) -> None:
            self.writes += 1
            if self.writes == 2:
                raise TransientError("postgres down")
            await store.write(rows, states)

    result = await processor(FailSecond(), producer, chunk_size=2).handle(records(*map(encode, raws)), states)
    assert (result.computed + result.duplicates, len(store.rows)) == (5, 5)
    by_id: dict[str, set[str]] = {}
    for v in producer.records(FeatureVectorComputed):
        by_id.setdefault(v.event_id, set()).add(repr(sorted(v.features.items())))
    assert len(by_id) == 5 and all(len(values) == 1 for values in by_id.values())  # re-sent, never changed
    assert len(states.data["c0"]["events"]) == 3 and len(states.data["c1"]["events"]) == 2  # counted once
