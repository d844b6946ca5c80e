"""Features throughput: events/s through the features service vs a bare aiokafka consume→produce
loop, on the same topic and payloads, in the same run, against the running stack.

A fresh namespace of the stack gets a backlog of N RawEvents (the example loan stream, Avro,
as ingestion writes them) in events.raw. Then, one after the other, each reads the whole backlog
as a new consumer group:

    (a) baseline: a bare aiokafka loop — getmany, produce each record's bytes unchanged to a
        scratch topic (acks=all, idempotent, lz4, linger 5 ms: the platform's producer settings),
        wait for the acks, commit — nothing decoded, nothing computed, nothing stored
    (b) the features service, a real process (python -m driftline_features): Avro decode, raw and
        derived features, per-entity windows in the faust table (changelog to Kafka), Avro encode
        to features.vectors, COPY + upserts into the online store, acks, commit

Throughput of each = (N - 1) / (time of its last output record - time of its first), from the
output records' timestamps: steady state, without start-up (group join, table recovery).
Prints both, the ratio b/a, the service's wall time from its start, and its batch and store-write
latencies. Run against the test stack:

    DRIFTLINE_STATE_DIR=.state/test .venv/bin/python bench/features.py [--events 5000] [--entities 500]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # noqa: E402
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # noqa: E402

from driftline.catalog import EVENTS_RAW, FEATURES_VECTORS, default_catalog  # noqa: E402
from driftline.events import envelope  # noqa: E402
from driftline.producer import EventProducer  # noqa: E402
from driftline.serde import AvroSerde, SchemaRegistryClient  # noqa: E402
from driftline.settings import StackSettings  # noqa: E402
from driftline_cli.examples.loan_approval.generator import LoanStream  # noqa: E402
from tests.support import Namespace, ServiceProcess, create_namespace, drop_namespace  # noqa: E402

PRODUCER_SETTINGS: dict[str, Any] = {
    "acks": "all",
    "enable_idempotence": True,
    "linger_ms": 5,
    "max_batch_size": 256 * 1024,
    "compression_type": "lz4",
}
BASELINE_TOPIC = "bench.passthrough"
T0 = datetime(2025, 6, 1, 8, 0, tzinfo=UTC)


def raw_events(n: int, entities: int) -> list[dict[str, Any]]:
    """RawEvent records of the example stream: ``entities`` customers, one application every 2 s."""
    out = []
    for i, item in enumerate(LoanStream(seed=5).take(n)):
        payload = {k: v for k, v in item.event["payload"].items()}
        entity = f"cust-{i * 7919 % entities}"
        payload["customer_id"] = entity
        out.append(
            {
                **envelope("bench", event_time=T0 + timedelta(seconds=2 * i)),
                "event_type": "loan_application",
                "entity_id": entity,
                "payload": payload,
                "source": "generator",
            }
        )
    return out


async def end_offsets(stack: StackSettings, topic: str) -> tuple[int, list[TopicPartition]]:
    consumer = AIOKafkaConsumer(**stack.kafka.client_kwargs())
    await consumer.start()
    try:
        await consumer.topics()
        admin = AIOKafkaAdminClient(**stack.kafka.client_kwargs())
        await admin.start()
        try:
            (described,) = await admin.describe_topics([topic])
        finally:
            await admin.close()
        tps = [TopicPartition(topic, p["partition"]) for p in described["partitions"]]
        ends = await consumer.end_offsets(tps)
        return sum(ends.values()), tps
    finally:
        await consumer.stop()


async def output_timestamps(stack: StackSettings, topic: str, expected: int, timeout_s: float) -> list[int]:
    """Kafka timestamps (CreateTime: when the producer sent them) of every record of ``topic``."""
    deadline = time.monotonic() + timeout_s
    while True:
        total, tps = await end_offsets(stack, topic)
        if total >= expected:
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"{topic}: {total} of {expected} records after {timeout_s}s")
        await asyncio.sleep(1)
    consumer = AIOKafkaConsumer(**stack.kafka.client_kwargs(), enable_auto_commit=False)
    await consumer.start()
    stamps: list[int] = []
    try:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        while len(stamps) < total:
            for records in (await consumer.getmany(timeout_ms=1000, max_records=5000)).values():
                stamps += [r.timestamp for r in records]
    finally:
        await consumer.stop()
    return sorted(stamps)


def rate(stamps: list[int]) -> float:
    span_s = (stamps[-1] - stamps[0]) / 1000
    return (len(stamps) - 1) / span_s if span_s > 0 else float("inf")


async def baseline(stack: StackSettings, n: int) -> None:
    """(a) consume events.raw, produce the same bytes, await acks, commit — per fetched batch."""
    source, sink = stack.topic_prefix + EVENTS_RAW, stack.topic_prefix + BASELINE_TOPIC
    consumer = AIOKafkaConsumer(
        source,
        **stack.kafka.client_kwargs(),
        group_id=stack.topic_prefix + "bench-baseline",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    producer = AIOKafkaProducer(**stack.kafka.client_kwargs(), **PRODUCER_SETTINGS)
    await consumer.start()
    await producer.start()
    try:
        done = 0
        while done < n:
            batches = await consumer.getmany(timeout_ms=500, max_records=500)
            futures = [
                await producer.send(sink, value=r.value, key=r.key) for records in batches.values() for r in records
            ]
            await asyncio.gather(*futures)
            if batches:
                await consumer.commit()
            done += len(futures)
    finally:
        await producer.stop()
        await consumer.stop()


def metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else float("nan")


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=5000)
    ap.add_argument("--entities", type=int, default=500)
    args = ap.parse_args()
    n = args.events

    base = StackSettings()
    ns: Namespace = await create_namespace(base, "benchf")
    stack = ns.stack
    registry = SchemaRegistryClient.from_settings(stack)
    producer = EventProducer(stack.kafka, AvroSerde(registry, topic_prefix=stack.topic_prefix), "b")
    service: ServiceProcess | None = None
    try:
        partitions = default_catalog()[EVENTS_RAW].partitions
        admin = AIOKafkaAdminClient(**stack.kafka.client_kwargs())
        await admin.start()
        await admin.create_topics([NewTopic(stack.topic_prefix + BASELINE_TOPIC, partitions, 1)])
        await admin.close()
        await producer.start([EVENTS_RAW])
        events = raw_events(n, args.entities)
        for i in range(0, n, 1000):
            await producer.publish_many([(EVENTS_RAW, e) for e in events[i : i + 1000]])
        print(f"backlog: {n} RawEvents of {args.entities} entities in {stack.topic_prefix}{EVENTS_RAW}")
        print(f"({partitions} partitions); cpus: {os.cpu_count()}")

        await baseline(stack, n)
        a = rate(await output_timestamps(stack, stack.topic_prefix + BASELINE_TOPIC, n, 120))

        service = ServiceProcess("driftline_features", ns, env={"DRIFTLINE_LOG_LEVEL": "WARNING"}).start(
            "DRIFTLINE_FEATURES_"
        )
        started = time.perf_counter()
        await service.wait_ready(timeout_s=120)
        stamps = await output_timestamps(stack, stack.topic_prefix + FEATURES_VECTORS, n, 600)
        wall = time.perf_counter() - started
        b = rate(stamps)
        async with httpx.AsyncClient() as http:
            text = (await http.get(f"{service.url}/metrics")).text
        batches = metric(text, "driftline_features_batch_seconds_count")
        batch_s = metric(text, "driftline_features_batch_seconds_sum") / batches
        store_s = metric(text, "driftline_features_store_write_seconds_sum") / metric(
            text, "driftline_features_store_write_seconds_count"
        )

        print()
        print(f"{'':<4} {'what':<58} {'events/s':>10}")
        print(f"{'a':<4} {'bare aiokafka consume -> produce (same bytes), commit':<58} {a:>10,.0f}")
        print(f"{'b':<4} {'features service (faust + windows + Avro + online store)':<58} {b:>10,.0f}")
        print()
        print(f"b/a = {b / a:.3f}")
        print(f"service: {wall:.1f} s from process start to the last vector (start-up, group join, table recovery)")
        print(f"service: {batches:.0f} batches, mean {n / batches:.0f} events and {batch_s * 1000:.1f} ms per batch,")
        print(f"         mean online-store write {store_s * 1000:.1f} ms per batch")
    finally:
        if service is not None:
            service.stop()
        await producer.stop()
        await registry.close()
        await drop_namespace(ns, base)


if __name__ == "__main__":
    asyncio.run(main())
