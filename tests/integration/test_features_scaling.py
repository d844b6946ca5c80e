"""Scaling out and back in while events stream: the second worker takes over partitions with their
window state (recovered from the changelog in Kafka), hands them back when it stops, and every
vector is stored exactly once with the values of a single uninterrupted worker."""

from __future__ import annotations

import asyncio
import re

import asyncpg
import httpx
import orjson

from driftline.catalog import EVENTS_RAW, FEATURES_VECTORS
from driftline.producer import EventProducer
from driftline.serde import AvroSerde, SchemaRegistryClient
from tests.integration.test_features_crash import FAST_GROUP, stream_of_events, uninterrupted_run
from tests.support import Namespace, ServiceProcess, TopicReader, eventually


def computed(metrics_text: str) -> float:
    m = re.search(r'^driftline_features_events_total\{outcome="computed"\} (\S+)$', metrics_text, re.M)
    return float(m.group(1)) if m else 0.0


async def test_a_second_worker_joins_and_leaves_mid_stream(namespace: Namespace) -> None:
    events = stream_of_events(seed=23)
    expected, expected_latest = uninterrupted_run(events)
    registry = SchemaRegistryClient.from_settings(namespace.stack)
    producer = EventProducer(namespace.stack.kafka, AvroSerde(registry, topic_prefix=namespace.prefix), "scaling-test")
    await producer.start([EVENTS_RAW])
    reader = await TopicReader(namespace, [FEATURES_VECTORS]).start()
    first = ServiceProcess("driftline_features", namespace, env=FAST_GROUP).start("DRIFTLINE_FEATURES_")
    second: ServiceProcess | None = None
    conn = await asyncpg.connect(namespace.stack.postgres_dsn.get_secret_value())

    async def produce_paced() -> None:
        for i in range(0, len(events), 20):
            await producer.publish_many([(EVENTS_RAW, ev) for ev in events[i : i + 20]])
            await asyncio.sleep(0.25)

    try:
        await first.wait_ready(timeout_s=90)
        producing = asyncio.create_task(produce_paced())
        await reader.wait_for(lambda evs: len(evs) >= 200, timeout_s=120, what="200 vectors")
        second = ServiceProcess("driftline_features", namespace, env=FAST_GROUP).start("DRIFTLINE_FEATURES_")
        await second.wait_ready(timeout_s=90)
        await reader.wait_for(lambda evs: len(evs) >= 600, timeout_s=120, what="600 vectors")
        async with httpx.AsyncClient() as http:

            async def second_worked() -> None:
                assert computed((await http.get(f"{second.url}/metrics")).text) > 0

            await eventually(second_worked, timeout_s=60)
        assert second.stop() in (0, -15)
        await producing

        async def all_stored() -> None:
            n = await conn.fetchval("SELECT count(*) FROM features.vectors")
            assert n == len(expected), f"{n} of {len(expected)} vectors stored"

        await eventually(all_stored, timeout_s=180, interval_s=1)
        rows = await conn.fetch("SELECT source_event_id, features, late FROM features.vectors")
        assert sorted(r["source_event_id"] for r in rows) == sorted(expected)
        for r in rows:
            assert orjson.loads(r["features"]) == expected[r["source_event_id"]]["features"], r["source_event_id"]
            assert r["late"] == expected[r["source_event_id"]]["late"]
        latest = await conn.fetch("SELECT entity_id, source_event_id FROM features.latest")
        assert {r["entity_id"]: r["source_event_id"] for r in latest} == expected_latest
        await reader.wait_for(
            lambda evs: {e.value["source_event_id"] for e in evs} >= set(expected), timeout_s=60, what="all vectors"
        )
        for e in reader.events:
            assert e.value["features"] == expected[e.value["source_event_id"]]["features"]
    finally:
        await conn.close()
        await reader.stop()
        await producer.stop()
        await registry.close()
        if second is not None:
            second.stop()
        assert first.stop() in (0, -15)
