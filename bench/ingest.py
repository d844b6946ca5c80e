"""Ingestion throughput: the same N Avro events published three ways, against the running stack.

    (a) a bare aiokafka producer, same settings as the platform's (acks=all, idempotence, lz4,
        linger 5 ms, 256 KiB batches): records built beforehand, timed = Avro encoding + send + acks
    (b) the SDK's direct-Kafka path (driftline_sdk.Publisher.kafka): validation, envelope, encoding,
        send, acks — from the JSON-shaped events a client has
    (c) the HTTP batch endpoint of a real ingestion service process (started here on a free port,
        in a fresh namespace of the stack): client-side JSON is serialised beforehand

Prints events/s per path (median of the rounds; rounds interleave a0, a, b, c so that noise from other
work on the machine hits each path alike), the ratios b/a and c/a (per round, and their median), and
p50/p99 request latency of (c): from the first attempt of a batch until it is stored, so the time
spent on 503 answers (backpressure) and their Retry-After waits counts, and how many 503s there were.
Goal: b/a >= 0.8. Run against the test stack:

    DRIFTLINE_STATE_DIR=.state/test .venv/bin/python bench/ingest.py [--events 20000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import fastavro  # noqa: E402
import httpx  # noqa: E402
import orjson  # noqa: E402
from aiokafka import AIOKafkaProducer  # noqa: E402

from driftline.catalog import EVENTS_RAW, parsed_schema  # noqa: E402
from driftline.project import load_project  # noqa: E402
from driftline.serde import AvroSerde, SchemaRegistryClient  # noqa: E402
from driftline.settings import LOCAL_API_TOKEN, StackSettings  # noqa: E402
from driftline.validation import Valid, Validator  # noqa: E402
from driftline_cli.examples.loan_approval.generator import LoanStream  # noqa: E402
from driftline_sdk import Publisher  # noqa: E402
from tests.support import Namespace, ServiceProcess, create_namespace, drop_namespace  # noqa: E402

# The platform producer's settings (driftline.producer.EventProducer defaults).
PRODUCER_SETTINGS: dict[str, Any] = {
    "acks": "all",
    "enable_idempotence": True,
    "linger_ms": 5,
    "max_batch_size": 256 * 1024,
    "compression_type": "lz4",
}


def fresh_events(template: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The same events with new ids (so the service's idempotency keys never short-cut a round)."""
    return [{**e, "event_id": str(uuid.uuid4())} for e in template]


async def path_a(stack: StackSettings, serde: AvroSerde, events: list[dict[str, Any]], validator: Validator) -> float:
    """Bare aiokafka: pre-built RawEvent records; timed: encode (Confluent framing) + send + acks."""
    built = [validator.event(e, i, producer="bench", source="bench") for i, e in enumerate(events)]
    records = [(v.record, v.key) for v in built if isinstance(v, Valid)]
    assert len(records) == len(events)
    schema = parsed_schema("RawEvent")
    header = serde._writer[EVENTS_RAW][2]  # the same magic byte + schema id the platform writes
    topic = stack.topic_prefix + EVENTS_RAW
    producer = AIOKafkaProducer(**stack.kafka.client_kwargs(), **PRODUCER_SETTINGS)
    await producer.start()
    try:
        started = time.perf_counter()
        futures = []
        for record, key in records:
            buf = io.BytesIO()
            buf.write(header)
            fastavro.schemaless_writer(buf, schema, record)
            futures.append(await producer.send(topic, value=buf.getvalue(), key=key))
        await asyncio.gather(*futures)
        return time.perf_counter() - started
    finally:
        await producer.stop()


async def path_a0(stack: StackSettings, serde: AvroSerde, events: list[dict[str, Any]], validator: Validator) -> float:
    """Reference only: already-encoded bytes, timed = send + acks (the broker and client alone)."""
    built = [validator.event(e, i, producer="bench", source="bench") for i, e in enumerate(events)]
    encoded = [(serde.encode(EVENTS_RAW, v.record), v.key) for v in built if isinstance(v, Valid)]
    topic = stack.topic_prefix + EVENTS_RAW
    producer = AIOKafkaProducer(**stack.kafka.client_kwargs(), **PRODUCER_SETTINGS)
    await producer.start()
    try:
        started = time.perf_counter()
        futures = [await producer.send(topic, value=value, key=key) for value, key in encoded]
        await asyncio.gather(*futures)
        return time.perf_counter() - started
    finally:
        await producer.stop()


async def path_b(stack: StackSettings, events: list[dict[str, Any]]) -> float:
    """The SDK straight to Kafka, with its default batching."""
    async with Publisher.kafka(stack, load_project(), source="bench") as pub:
        started = time.perf_counter()
        result = await pub.publish(events)
        elapsed = time.perf_counter() - started
    assert result.accepted == len(events), result.errors[:3]
    return elapsed


async def post_until_stored(client: httpx.AsyncClient, body: bytes) -> tuple[float, int]:
    """POST one batch until it is stored; (seconds from the first attempt, 503 answers on the way).

    A 503 is backpressure: the client waits Retry-After and sends again, and that wait is part of
    what the client experiences, so it is in the latency (counting only the last attempt would
    understate p99 exactly when the service is saturated).
    """
    started = time.perf_counter()
    retries = 0
    while True:
        r = await client.post("/v1/events", content=body)
        if r.status_code != 503:
            assert r.status_code == 200, r.text[:300]
            return time.perf_counter() - started, retries
        retries += 1
        await asyncio.sleep(float(r.headers.get("retry-after", "1")))


async def path_c(
    url: str, events: list[dict[str, Any]], batch: int, concurrency: int
) -> tuple[float, list[float], int]:
    """POST /v1/events in batches, ``concurrency`` requests at a time; returns time, latencies, 503s."""
    bodies = [orjson.dumps({"events": events[i : i + batch]}) for i in range(0, len(events), batch)]
    headers = {"Authorization": f"Bearer {LOCAL_API_TOKEN}", "Content-Type": "application/json"}
    latencies: list[float] = []
    retries = 0
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for b in bodies:
        queue.put_nowait(b)
    async with httpx.AsyncClient(base_url=url, timeout=120, headers=headers) as client:
        await client.get("/healthz")  # connection set up outside the timing

        async def worker() -> None:
            nonlocal retries
            while not queue.empty():
                latency, overloaded = await post_until_stored(client, queue.get_nowait())
                latencies.append(latency)
                retries += overloaded

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - started, latencies, retries


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--http-batch", type=int, default=500)
    ap.add_argument("--http-concurrency", type=int, default=4)
    args = ap.parse_args()

    base = StackSettings()
    ns: Namespace = await create_namespace(base, "bench")
    stack = ns.stack
    proc = ServiceProcess(
        "driftline_ingestion",
        ns,
        env={"DRIFTLINE_API_TOKENS": "", "DRIFTLINE_LOG_LEVEL": "WARNING", "DRIFTLINE_INGESTION_MAX_BATCH": "1000"},
    ).start("DRIFTLINE_INGESTION_")
    registry = SchemaRegistryClient.from_settings(stack)
    serde = AvroSerde(registry, topic_prefix=stack.topic_prefix)
    try:
        await proc.wait_ready()
        await serde.prepare(EVENTS_RAW)
        validator = Validator.from_project(load_project())
        template = [item.event for item in LoanStream(seed=11).take(args.events)]
        print(f"events per path and round: {args.events}; rounds: {args.rounds}; cpus: {os.cpu_count()}")
        print(f"producer: {PRODUCER_SETTINGS}")
        print(f"HTTP: batches of {args.http_batch}, {args.http_concurrency} concurrent requests, service at {proc.url}")

        # Warm-up (connections, schema ids, code paths), not counted.
        warm = template[: min(2000, len(template))]
        await path_a(stack, serde, fresh_events(warm), validator)
        await path_b(stack, fresh_events(warm))
        await path_c(proc.url, fresh_events(warm), args.http_batch, args.http_concurrency)

        times: dict[str, list[float]] = {"a0": [], "a": [], "b": [], "c": []}
        latencies: list[float] = []
        overloaded = 0
        for r in range(args.rounds):
            times["a0"].append(await path_a0(stack, serde, fresh_events(template), validator))
            times["a"].append(await path_a(stack, serde, fresh_events(template), validator))
            times["b"].append(await path_b(stack, fresh_events(template)))
            elapsed, lat, retried = await path_c(
                proc.url, fresh_events(template), args.http_batch, args.http_concurrency
            )
            times["c"].append(elapsed)
            latencies += lat
            overloaded += retried
            rates = {k: args.events / v[-1] for k, v in times.items()}
            print(
                f"round {r + 1}: "
                + "  ".join(f"{k}={rates[k]:,.0f}/s" for k in ("a0", "a", "b", "c"))
                + f"   b/a={rates['b'] / rates['a']:.2f} c/a={rates['c'] / rates['a']:.2f}"
            )

        rate = {k: args.events / statistics.median(v) for k, v in times.items()}
        labels = {
            "a0": "bare aiokafka, pre-encoded bytes (reference)",
            "a": "bare aiokafka, Avro encode + send (baseline)",
            "b": "SDK Publisher.kafka (validate + encode + send)",
            "c": f"HTTP POST /v1/events (batch {args.http_batch} x{args.http_concurrency})",
        }
        print()
        print(f"{'path':<5} {'what':<52} {'events/s':>10} {'vs a':>6}")
        for k in ("a0", "a", "b", "c"):
            print(f"{k:<5} {labels[k]:<52} {rate[k]:>10,.0f} {rate[k] / rate['a']:>6.2f}")
        print()
        # Paired per round (same moment, same machine load), then the median over rounds.
        paired = {k: statistics.median(a / x for a, x in zip(times["a"], times[k], strict=True)) for k in ("b", "c")}
        print(f"b/a = {paired['b']:.2f}   (median of the per-round ratios; goal >= 0.8)")
        print(f"c/a = {paired['c']:.2f}")
        print(
            f"(c) latency until stored over {len(latencies)} batches of {args.http_batch} events "
            f"(503 answers and their Retry-After waits included): "
            f"p50 = {pct(latencies, 0.5) * 1000:.1f} ms, p99 = {pct(latencies, 0.99) * 1000:.1f} ms; "
            f"503 answers: {overloaded}"
        )
    finally:
        proc.stop()
        await registry.close()
        await drop_namespace(ns, base)


if __name__ == "__main__":
    asyncio.run(main())
