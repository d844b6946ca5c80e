"""Features throughput: events/s through the features service vs a bare aiokafka consume→produce
loop, on the same topic and payloads, in the same run, against the running stack.

A fresh namespace of the stack gets a backlog of N RawEvents (the example loan stream, Avro,
as ingestion writes them) in events.raw. Then, one after the other, each reads the whole backlog
as a new consumer group:

    (a) baseline: a bare aiokafka loop — getmany, produce each record's bytes unchanged to a
        scratch topic (acks=all, idempotent, lz4, linger 5 ms: the platform's producer settings),
        wait for the acks, commit — nothing decoded, nothing computed, nothing stored
    (c) faust alone: a faust app like the service's whose agent takes the same batches and only
        acknowledges them (the ceiling of any faust agent here: (b) cannot be faster), with the
        service's delivery (driftline_features.delivery); (c0) the same with faust's stock delivery
    (b) the features service, a real process (python -m driftline_features): Avro decode, raw and
        derived features, per-entity windows in the faust table (changelog to Kafka), Avro encode
        to features.vectors, COPY + upserts into the online store, acks, commit

Throughput of each = (N - 1) / (time of its last output record - time of its first), from the
output records' timestamps: steady state, without start-up (group join, table recovery).
Prints them, the ratios to a, the CPU time per event of each (process time, all threads: far less
sensitive than rates to the other work on a shared machine), the load average, the service's wall
time from its start, and its batch and store-write latencies. With ``--profile``, py-spy samples
the service process from ready to its last vector and the bench prints the profile's top entries
(self time and, for the service's and the libraries' own functions, inclusive time). Run against the test stack:

    DRIFTLINE_STATE_DIR=.state/test .venv/bin/python bench/features.py [--events 5000] [--entities 500]
        [--profile] [--top 15] [--workers 1]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
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
from driftline_features.config import FeaturesSettings  # noqa: E402
from driftline_features.delivery import use_batch_delivery  # noqa: E402
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


async def baseline(stack: StackSettings, n: int) -> float:
    """(a) consume events.raw, produce the same bytes, await acks, commit — per fetched batch.
    Returns the CPU seconds of the loop (this process, all threads) from its first records."""
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
        cpu0: float | None = None
        while done < n:
            batches = await consumer.getmany(timeout_ms=500, max_records=500)
            if cpu0 is None and batches:
                cpu0 = time.process_time()
            futures = [
                await producer.send(sink, value=r.value, key=r.key) for records in batches.values() for r in records
            ]
            await asyncio.gather(*futures)
            if batches:
                await consumer.commit()
            done += len(futures)
        return time.process_time() - (cpu0 or 0.0)
    finally:
        await producer.stop()
        await consumer.stop()


class Profile:
    """py-spy sampling a running process into collapsed stacks ("frame;frame;... count" lines)."""

    def __init__(self, pid: int, rate: int = 100) -> None:
        exe = shutil.which("py-spy")
        if exe is None:
            raise SystemExit("--profile needs py-spy on PATH (pip install py-spy)")
        self.out = Path(tempfile.mkdtemp(prefix="bench-features-")) / "profile.txt"
        # --nonblocking: the service is not paused per sample, so the profile costs it little.
        self.proc = subprocess.Popen(
            [
                exe,
                "record",
                "--pid",
                str(pid),
                "--rate",
                str(rate),
                "--format",
                "raw",
                "--nonblocking",
                "-o",
                str(self.out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> list[tuple[list[str], int]]:
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(60)
        stacks = []
        for line in self.out.read_text().splitlines():
            frames, _, count = line.rpartition(" ")
            if frames and count.isdigit():
                stacks.append((frames.split(";"), int(count)))
        return stacks


def profile_top(stacks: list[tuple[list[str], int]], top: int) -> list[str]:
    """The top frames by self time (the innermost frame of each sample) and, among the project's
    own frames (driftline*, bench), by inclusive time, as % of all samples."""
    total = sum(count for _, count in stacks) or 1
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for frames, count in stacks:
        self_time[_frame(frames[-1])] += count
        for frame in {_frame(f) for f in frames if "driftline" in f}:
            inclusive[frame] += count
    lines = [f"profile: {total} samples (py-spy, 100 Hz, from ready to the last vector)", "  self time:"]
    lines += [f"  {100 * c / total:5.1f}%  {f}" for f, c in self_time.most_common(top)]
    lines.append("  inclusive (driftline code):")
    lines += [f"  {100 * c / total:5.1f}%  {f}" for f, c in inclusive.most_common(top)]
    return lines


def _frame(frame: str) -> str:
    """``function (path/to/module.py:line)`` → ``function (module.py)``: one entry per function."""
    m = re.match(r"(.*) \((.*?):\d+\)$", frame)
    if not m:
        return frame
    return f"{m.group(1)} ({'/'.join(Path(m.group(2)).parts[-2:])})"


async def faust_only(
    stack: StackSettings, n: int, batch_size: int, within_s: float, *, batch_delivery: bool
) -> tuple[float, float]:
    """(c) faust alone: a faust app configured like the service's, whose agent takes the same
    batches (``noack_take``) and only acknowledges them; events/s from the first batch received to
    the last, and the CPU seconds (this process) between them. The ceiling of any faust agent on
    this machine: the service can go no faster. ``batch_delivery``: with the service's delivery
    (driftline_features.delivery), else faust's stock one (a ``wait_first`` per record)."""
    import faust
    from faust.contrib.asgi import faust_app_running

    app = faust.App(
        stack.topic_prefix + ("bench-faust-batch" if batch_delivery else "bench-faust"),
        broker=[f"kafka://{h.strip()}" for h in stack.kafka_bootstrap_servers.split(",")],
        store="memory://",
        web_enabled=False,
        autodiscover=False,
        datadir=tempfile.mkdtemp(prefix="bench-faust-"),
        consumer_auto_offset_reset="earliest",
        env={},
    )
    if batch_delivery:
        use_batch_delivery(app)
    source = app.topic(stack.topic_prefix + EVENTS_RAW, key_serializer="raw", value_serializer="raw")
    received: list[float] = []
    cpu: list[float] = []
    done = asyncio.Event()

    async def take_and_ack(stream: Any) -> None:
        async for events in stream.noack_take(batch_size, within=within_s):
            received.extend([time.perf_counter()] * len(events))
            cpu.append(time.process_time())
            for ev in events:
                await stream.ack(ev)
            if len(received) >= n and not done.is_set():
                cpu.append(time.process_time())
                done.set()

    app.agent(source, name="take-and-ack", concurrency=1)(take_and_ack)
    async with faust_app_running(app):
        await asyncio.wait_for(done.wait(), timeout=300)
    span = received[n - 1] - received[0]
    return ((n - 1) / span if span > 0 else float("inf")), cpu[-1] - cpu[0]


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) of a running process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else float("nan")


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=5000)
    ap.add_argument("--entities", type=int, default=500)
    ap.add_argument("--profile", action="store_true", help="sample the service with py-spy; print the top entries")
    ap.add_argument("--top", type=int, default=15, help="entries of the profile to print")
    ap.add_argument("--workers", type=int, default=1, help="features processes sharing the partitions")
    args = ap.parse_args()
    n = args.events

    base = StackSettings()
    ns: Namespace = await create_namespace(base, "benchf")
    stack = ns.stack
    registry = SchemaRegistryClient.from_settings(stack)
    producer = EventProducer(stack.kafka, AvroSerde(registry, topic_prefix=stack.topic_prefix), "b")
    services: list[ServiceProcess] = []
    profile: Profile | None = None
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

        a_cpu = await baseline(stack, n)
        a = rate(await output_timestamps(stack, stack.topic_prefix + BASELINE_TOPIC, n, 120))
        settings = FeaturesSettings()  # the service's batch settings (DRIFTLINE_FEATURES_BATCH_*)
        batch = (settings.batch_size, settings.batch_wait_s)
        c_stock, c_stock_cpu = await faust_only(stack, n, *batch, batch_delivery=False)
        c, c_cpu = await faust_only(stack, n, *batch, batch_delivery=True)

        # The workers start together; with several, they split the partitions (each a static group
        # member with its own slot), and the rate of each is its own count over the common span.
        services = [
            ServiceProcess("driftline_features", ns, env={"DRIFTLINE_LOG_LEVEL": "WARNING"}).start(
                "DRIFTLINE_FEATURES_"
            )
            for _ in range(args.workers)
        ]
        started = time.perf_counter()
        for service in services:
            await service.wait_ready(timeout_s=120)
        pids = [service.proc.pid for service in services if service.proc is not None]
        b_cpu0 = sum(process_cpu_s(pid) for pid in pids)
        if args.profile:
            profile = Profile(pids[0])
        stamps = await output_timestamps(stack, stack.topic_prefix + FEATURES_VECTORS, n, 600)
        b_cpu = sum(process_cpu_s(pid) for pid in pids) - b_cpu0
        wall = time.perf_counter() - started
        stacks = profile.stop() if profile is not None else None
        b = rate(stamps)
        span_s = (stamps[-1] - stamps[0]) / 1000
        async with httpx.AsyncClient() as http:
            texts = [(await http.get(f"{service.url}/metrics")).text for service in services]
        batches = sum(metric(t, "driftline_features_batch_seconds_count") for t in texts)
        batch_s = sum(metric(t, "driftline_features_batch_seconds_sum") for t in texts) / batches
        store_s = sum(metric(t, "driftline_features_store_write_seconds_sum") for t in texts) / sum(
            metric(t, "driftline_features_store_write_seconds_count") for t in texts
        )
        handled = [
            sum(metric(t, f'driftline_features_events_total{{outcome="{o}"}}') for o in ("computed", "duplicate"))
            for t in texts
        ]

        what = "features service (faust + windows + Avro + online store)"
        if args.workers > 1:
            what = f"features service, {args.workers} workers together"
        print()
        print(f"{'':<4} {'what':<58} {'events/s':>10}")
        print(f"{'a':<4} {'bare aiokafka consume -> produce (same bytes), commit':<58} {a:>10,.0f}")
        print(f"{'b':<4} {what:<58} {b:>10,.0f}")
        print(f"{'c':<4} {'faust alone: noack_take + ack, nothing done (ceiling of b)':<58} {c:>10,.0f}")
        print(f"{'c0':<4} {'the same with stock faust delivery (a wait per record)':<58} {c_stock:>10,.0f}")
        print()
        print(f"b/a = {b / a:.3f}   c/a = {c / a:.3f}   c0/a = {c_stock / a:.3f}   b/c = {b / c:.3f}")
        print(
            f"CPU per event (process time, all threads): a {a_cpu / n * 1e6:.0f} µs, b {b_cpu / n * 1e6:.0f} µs, "
            f"c {c_cpu / n * 1e6:.0f} µs, c0 {c_stock_cpu / n * 1e6:.0f} µs; a/b by CPU = {a_cpu / b_cpu:.3f}"
        )
        print(f"load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
        if args.workers > 1:
            for i, count in enumerate(handled):
                per = count / span_s
                print(
                    f"worker {i + 1}: {count:.0f} events, {per:,.0f} events/s over the common span ({per / a:.3f} of a)"
                )
        print(f"service: {wall:.1f} s from process start to the last vector (start-up, group join, table recovery)")
        print(f"service: {batches:.0f} batches, mean {n / batches:.0f} events and {batch_s * 1000:.1f} ms per batch,")
        print(f"         mean online-store write {store_s * 1000:.1f} ms per batch")
        if stacks is not None:
            print()
            print("\n".join(profile_top(stacks, args.top)))
    finally:
        for service in services:
            service.stop()
        await producer.stop()
        await registry.close()
        await drop_namespace(ns, base)


if __name__ == "__main__":
    asyncio.run(main())
