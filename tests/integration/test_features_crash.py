"""A features worker killed (SIGKILL) mid-stream and restarted: every vector exactly once in the
online store, the same values as an uninterrupted run, the window state recovered from Kafka."""

from __future__ import annotations

import asyncio
import random
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from driftline.catalog import EVENTS_RAW, FEATURES_VECTORS
from driftline.events import derived_event_id, envelope, epoch_ms
from driftline.kafka import partitions_of
from driftline.producer import EventProducer
from driftline.project import load_project
from driftline.serde import AvroSerde, SchemaRegistryClient
from driftline_ml.featuredefs import FeatureSet
from tests.support import Namespace, ServiceProcess, TopicReader, eventually

T0 = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)
N_EVENTS = 1200
N_ENTITIES = 30
# A killed member keeps its partitions until its session times out: keep that short here.
FAST_GROUP = {
    "DRIFTLINE_FEATURES_SESSION_TIMEOUT_S": "8",
    "DRIFTLINE_FEATURES_HEARTBEAT_INTERVAL_S": "1",
    "DRIFTLINE_FEATURES_FAUST_LOG_LEVEL": "INFO",  # rebalances in the logs, for diagnosis
}


def stream_of_events(seed: int = 11) -> list[dict[str, Any]]:
    """Loan applications of a few customers, 20 s apart in event time, with out-of-order events
    (within the 5-minute lateness), very late ones (30 minutes back) and re-deliveries."""
    rng = random.Random(seed)
    events: list[dict[str, Any]] = []
    used: set[tuple[str, datetime]] = set()
    for i in range(N_EVENTS):
        if events and rng.random() < 0.03:
            events.append(events[rng.randrange(len(events))])  # a re-delivery: same record
            continue
        entity = f"cust-{rng.randrange(N_ENTITIES)}"
        t = T0 + timedelta(seconds=20 * i)
        roll = rng.random()
        if roll < 0.10:
            t -= timedelta(seconds=rng.randrange(1, 240))
        elif roll < 0.13:
            t -= timedelta(minutes=30)
        while (entity, t) in used:  # distinct event times per entity: "latest" is unambiguous
            t += timedelta(milliseconds=1)
        used.add((entity, t))
        payload = {
            "customer_id": entity,
            "salary": float(rng.randrange(20_000, 150_000)),
            "commission": float(rng.choice([0, rng.randrange(10_000, 75_000)])),
            "age": rng.randrange(20, 80),
            "elevel": rng.randrange(5),
            "car": rng.randrange(1, 21),
            "zipcode": rng.randrange(9),
            "hvalue": float(rng.randrange(50_000, 900_000)),
            "hyears": rng.randrange(1, 31),
            "loan": float(rng.randrange(0, 500_000)),
        }
        events.append(
            {
                **envelope("crash-test", event_time=t),
                "event_type": "loan_application",
                "entity_id": entity,
                "payload": payload,
                "source": "generator",
            }
        )
    return events


def uninterrupted_run(events: list[dict[str, Any]]) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """What one worker computes without interruption: features (and late flag) per raw event id,
    and the latest source event per entity. Per-entity order is the produce order (one partition)."""
    fs = FeatureSet(load_project().features)
    states: dict[str, Any] = {}
    out: dict[str, dict[str, Any]] = {}
    latest: dict[str, tuple[int, str]] = {}
    for ev in events:
        row = fs.row(ev["payload"])
        t = epoch_ms(ev["event_time"])
        new, windowed = fs.apply(states.get(ev["entity_id"]), ev["event_id"], t, row)
        if new is not None:
            states[ev["entity_id"]] = new
        out.setdefault(ev["event_id"], {"features": fs.vector(row, windowed), "late": windowed.late})
        if ev["entity_id"] not in latest or t > latest[ev["entity_id"]][0]:
            latest[ev["entity_id"]] = (t, ev["event_id"])
    return out, {entity: eid for entity, (_, eid) in latest.items()}


async def test_a_worker_killed_mid_stream_and_restarted_loses_and_doubles_nothing(namespace: Namespace) -> None:
    events = stream_of_events()
    expected, expected_latest = uninterrupted_run(events)
    assert sum(e["late"] for e in expected.values()) > 10  # the stream does exercise late events

    registry = SchemaRegistryClient.from_settings(namespace.stack)
    producer = EventProducer(namespace.stack.kafka, AvroSerde(registry, topic_prefix=namespace.prefix), "crash-test")
    await producer.start([EVENTS_RAW])
    reader = await TopicReader(namespace, [FEATURES_VECTORS]).start()
    first = ServiceProcess("driftline_features", namespace, env=FAST_GROUP).start("DRIFTLINE_FEATURES_")
    second: ServiceProcess | None = None
    conn = await asyncpg.connect(namespace.stack.postgres_dsn.get_secret_value())

    async def produce_paced() -> None:
        for i in range(0, len(events), 40):
            await producer.publish_many([(EVENTS_RAW, ev) for ev in events[i : i + 40]])
            await asyncio.sleep(0.25)

    try:
        await first.wait_ready(timeout_s=90)
        producing = asyncio.create_task(produce_paced())
        await reader.wait_for(lambda evs: len(evs) >= 300, timeout_s=120, what="a third of the vectors")
        first.kill()
        seen_at_kill = len({e.value["source_event_id"] for e in reader.events})
        assert 0 < seen_at_kill < len(expected), "the kill must land in the middle of the stream"
        await producing
        second = ServiceProcess("driftline_features", namespace, env=FAST_GROUP).start("DRIFTLINE_FEATURES_")
        await second.wait_ready(timeout_s=90)

        async def all_stored() -> None:
            n = await conn.fetchval("SELECT count(*) FROM features.vectors")
            assert n == len(expected), f"{n} of {len(expected)} vectors stored"

        await eventually(all_stored, timeout_s=180, interval_s=1)
        await reader.wait_for(
            lambda evs: {e.value["source_event_id"] for e in evs} >= set(expected),
            timeout_s=60,
            what="every vector on the topic",
        )

        # Online store: exactly one row per source event, with the uninterrupted run's values.
        rows = await conn.fetch("SELECT event_id, source_event_id, features, late FROM features.vectors")
        assert sorted(r["source_event_id"] for r in rows) == sorted(expected)
        for r in rows:
            want = expected[r["source_event_id"]]
            assert r["event_id"] == derived_event_id(r["source_event_id"], "1")
            assert orjson.loads(r["features"]) == want["features"], r["source_event_id"]
            assert r["late"] == want["late"]
        latest = await conn.fetch("SELECT entity_id, source_event_id FROM features.latest")
        assert {r["entity_id"]: r["source_event_id"] for r in latest} == expected_latest

        # The topic: every vector at least once; repeats (replays) carry the same values.
        emitted: dict[str, list[dict[str, Any]]] = {}
        for e in reader.events:
            emitted.setdefault(e.value["source_event_id"], []).append(e.value)
        assert set(emitted) == set(expected)
        for source_id, copies in emitted.items():
            for copy in copies:
                assert copy["features"] == expected[source_id]["features"], source_id
                assert copy["late"] == expected[source_id]["late"]
        replayed = sum(len(c) for c in emitted.values()) - len(emitted)
        print(f"killed after {seen_at_kill} vectors; {replayed} vectors re-emitted after the restart")
    finally:
        await conn.close()
        await reader.stop()
        await producer.stop()
        await registry.close()
        first.kill()
        if second is not None:
            assert second.stop() in (0, -15)


async def read_latest(namespace: Namespace, topic: str) -> dict[tuple[int, bytes], tuple[int, bytes]]:
    """The last record per (partition, key) of a topic: (partition, key) → (offset, value)."""
    consumer = AIOKafkaConsumer(**namespace.stack.kafka.client_kwargs(), enable_auto_commit=False, group_id=None)
    await consumer.start()
    try:
        tps = await partitions_of(namespace.stack.kafka, [topic])
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        latest: dict[tuple[int, bytes], tuple[int, bytes]] = {}

        async def behind() -> bool:
            return any([await consumer.position(tp) < ends[tp] for tp in tps])

        while await behind():
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for rec in records:
                    latest[(rec.partition, rec.key or b"")] = (rec.offset, rec.value or b"")
        return latest
    finally:
        await consumer.stop()


async def test_progress_behind_the_committed_offsets_is_caught_up_by_reading_the_hole(namespace: Namespace) -> None:
    """What a worker killed between an offset commit and its changelog write leaves behind: the
    consumer group's committed offsets ahead of the worker's own record of durable progress.
    The next worker must read the hole from the log and refill it even when every record after it
    is already in the log (so nothing new arrives to prompt it), with the same values."""
    events = stream_of_events(seed=5)[:600]
    expected, _ = uninterrupted_run(events)
    half = 300
    registry = SchemaRegistryClient.from_settings(namespace.stack)
    producer = EventProducer(namespace.stack.kafka, AvroSerde(registry, topic_prefix=namespace.prefix), "hole-test")
    await producer.start([EVENTS_RAW])
    conn = await asyncpg.connect(namespace.stack.postgres_dsn.get_secret_value())
    first = ServiceProcess("driftline_features", namespace, env=FAST_GROUP).start("DRIFTLINE_FEATURES_")
    second: ServiceProcess | None = None

    async def stored(n: int) -> None:
        got = await conn.fetchval("SELECT count(*) FROM features.vectors")
        assert got == n, f"{got} of {n} vectors stored"

    try:
        await first.wait_ready(timeout_s=90)
        await producer.publish_many([(EVENTS_RAW, ev) for ev in events[:half]])
        await eventually(lambda: stored(len({ev["event_id"] for ev in events[:half]})), timeout_s=120, interval_s=1)
        assert first.stop() in (0, -15)  # graceful: offsets committed, changelogs written

        # Move the durable-progress record back by up to 25 records per partition.
        changelog = f"{namespace.prefix}features-source-offsets-changelog"
        progress = await read_latest(namespace, changelog)
        raw_producer = AIOKafkaProducer(**namespace.stack.kafka.client_kwargs(), acks="all")
        await raw_producer.start()
        assert len(progress) == 4, "the worker records its progress per partition in the changelog"
        resume: dict[int, int] = {}
        for (partition, key), (_, value) in progress.items():
            next_offset = int(orjson.loads(value))
            resume[partition] = max(0, next_offset - 25)
            await raw_producer.send_and_wait(changelog, orjson.dumps(resume[partition]), key=key, partition=partition)
        await raw_producer.stop()
        await conn.execute("DELETE FROM features.vectors")  # the hole's vectors must come again

        # Everything after the hole is already in the log before the next worker starts.
        await producer.publish_many([(EVENTS_RAW, ev) for ev in events[half:]])
        raw = await TopicReader(namespace, [EVENTS_RAW]).start(from_beginning=True)
        try:
            await raw.wait_for(lambda evs: len(evs) >= len(events), timeout_s=30, what="the raw events")
        finally:
            await raw.stop()
        to_compute = {e.value["event_id"] for e in raw.events if e.offset >= resume[e.partition]}
        assert to_compute - {ev["event_id"] for ev in events[half:]}, "the hole holds records of the first half"

        second = ServiceProcess("driftline_features", namespace, env=FAST_GROUP).start("DRIFTLINE_FEATURES_")
        await second.wait_ready(timeout_s=90)

        async def hole_refilled() -> None:
            ids = {r["source_event_id"] for r in await conn.fetch("SELECT source_event_id FROM features.vectors")}
            assert ids == to_compute, (
                f"{len(ids & to_compute)} of {len(to_compute)} vectors, {len(ids - to_compute)} extra"
            )

        await eventually(hole_refilled, timeout_s=120, interval_s=1)
        rows = await conn.fetch("SELECT source_event_id, features, late FROM features.vectors")
        for r in rows:
            assert orjson.loads(r["features"]) == expected[r["source_event_id"]]["features"], r["source_event_id"]
            assert r["late"] == expected[r["source_event_id"]]["late"]
        async with httpx.AsyncClient() as http:
            metrics_text = (await http.get(f"{second.url}/metrics")).text
        assert re.search(r"^driftline_features_offset_holes_total [1-9]", metrics_text, re.M), "no hole read?"
        hole_records = re.search(r"^driftline_features_offset_hole_records_total (\S+)", metrics_text, re.M)
        in_holes = sum(1 for e in raw.events if resume[e.partition] <= e.offset) - len(events[half:])
        assert hole_records is not None and 0 < float(hole_records.group(1)) <= in_holes, (
            "the hole's records are read from the log, each once"
        )
        assert re.search(r"^driftline_features_offset_gaps_total 0", metrics_text, re.M), "a hole was skipped"
    finally:
        await conn.close()
        await producer.stop()
        await registry.close()
        first.kill()
        if second is not None:
            assert second.stop() in (0, -15)
