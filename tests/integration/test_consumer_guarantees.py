"""The consumer runner on the real stack: poison records go to the DLQ and the consumer keeps going;
a consumer killed before committing gets the record again and the idempotent sink applies it once;
outages are retried without skipping or dead-lettering the record; an output the broker does not
acknowledge keeps the offset uncommitted until it is delivered."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from driftline.catalog import EVENTS_DLQ, LABELS
from driftline.consumer import ConsumerRunner
from driftline.events import Event, envelope
from driftline.history import topic_status
from driftline.producer import EventProducer
from driftline.retry import PoisonRecord, TransientError
from driftline.serde import AvroSerde, SchemaRegistryClient
from tests.support import ROOT, Namespace, TopicReader, eventually


def label(event_id: str | None = None, value: str = "approve") -> dict[str, Any]:
    return {
        **envelope("test", event_id=event_id),
        "labelled_event_id": str(uuid.uuid4()),
        "entity_id": "c-1",
        "label": value,
        "source": "test",
    }


async def _clients(ns: Namespace) -> tuple[SchemaRegistryClient, AvroSerde, EventProducer]:
    registry = SchemaRegistryClient.from_settings(ns.stack)
    serde = AvroSerde(registry, topic_prefix=ns.prefix)
    producer = EventProducer(ns.stack.kafka, serde, "test")
    await producer.start([LABELS])
    return registry, serde, producer


async def test_poison_records_go_to_the_dlq_and_the_consumer_keeps_going(namespace: Namespace) -> None:
    registry, serde, producer = await _clients(namespace)
    dlq = await TopicReader(namespace, [EVENTS_DLQ]).start()
    good1, refused, good2 = label(), label(value="refuse-me"), label()
    garbage = [b"not avro at all", b"\x00\x00\x00\x7f\xffgarbage", b""]
    await producer.publish(LABELS, good1)
    for raw in garbage:
        await (await producer.send_raw(LABELS, raw, key=b"c-1"))
    await producer.publish(LABELS, refused)
    await producer.publish(LABELS, good2)

    handled: list[str] = []

    async def handle(event: Event) -> None:
        if event.record.label == "refuse-me":
            raise PoisonRecord("label 'refuse-me' is not a class of the project", "validation_error")
        handled.append(event.event_id)

    runner = ConsumerRunner(
        group_id="poison-test",
        topics=[LABELS],
        kafka=namespace.stack.kafka,
        serde=serde,
        producer=producer,
        handler=handle,
    )
    task = asyncio.create_task(runner.run())
    try:
        await dlq.wait_for(lambda evs: len(evs) >= 4, what="4 dead letters")

        async def both_good_handled() -> None:
            assert handled == [good1["event_id"], good2["event_id"]]

        await eventually(both_good_handled)

        async def committed_in_the_namespaced_group() -> None:
            lag = {s.name: s.lag for s in await topic_status(namespace.stack)}[LABELS]
            assert lag == {f"{namespace.prefix}poison-test": 0}

        await eventually(committed_in_the_namespaced_group)
        letters = [e.record for e in dlq.on(EVENTS_DLQ)]
        assert [d.original for d in letters[:3]] == garbage
        assert {d.error_type for d in letters[:3]} == {"decode_error"}
        assert "magic byte" in letters[0].reason
        assert letters[0].original_topic == namespace.prefix + LABELS
        assert letters[0].source == f"consumer:{namespace.prefix}poison-test"
        rejected = letters[3]
        assert rejected.error_type == "validation_error"
        assert "refuse-me" in rejected.reason
        assert rejected.correlation_id == refused["correlation_id"]
        decoded, _ = await serde.decode(rejected.original, LABELS)
        assert decoded["event_id"] == refused["event_id"]  # the original bytes, not a re-encoding
        assert task.done() is False  # still consuming
    finally:
        runner.stop()
        await task
        await dlq.stop()
        await producer.stop()
        await registry.close()


async def test_outages_are_retried_and_the_record_is_handled_once_not_dead_lettered(namespace: Namespace) -> None:
    registry, serde, producer = await _clients(namespace)
    dlq = await TopicReader(namespace, [EVENTS_DLQ]).start()
    record = label()
    await producer.publish(LABELS, record)
    attempts = 0
    done = asyncio.Event()

    async def handle(event: Event) -> None:
        nonlocal attempts
        attempts += 1
        if attempts <= 4:
            raise TransientError("database unavailable")
        done.set()

    runner = ConsumerRunner(
        group_id="outage-test",
        topics=[LABELS],
        kafka=namespace.stack.kafka,
        serde=serde,
        producer=producer,
        handler=handle,
        max_attempts=2,  # outages must not count against this
    )
    task = asyncio.create_task(runner.run())
    try:
        await asyncio.wait_for(done.wait(), 60)
        assert attempts == 5
        await asyncio.sleep(1)
        await dlq.poll()
        assert dlq.on(EVENTS_DLQ) == []
    finally:
        runner.stop()
        await task
        await dlq.stop()
        await producer.stop()
        await registry.close()


async def test_a_consumer_killed_before_committing_gets_the_record_again_and_the_sink_applies_it_once(
    namespace: Namespace,
) -> None:
    registry, _, producer = await _clients(namespace)
    first, second = label(), label()
    await producer.publish(LABELS, first)
    await producer.publish(LABELS, second)
    env = {**namespace.env(), "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "tests.integration.crash_consumer", "crash-group"]

    proc = subprocess.Popen([*cmd, first["event_id"]], env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:

        def wait_for_hang() -> None:
            for line in proc.stdout:  # type: ignore[union-attr]
                if line.strip() == "HANGING":
                    return
            raise AssertionError("consumer exited before handling the first record")

        await asyncio.wait_for(asyncio.to_thread(wait_for_hang), 60)
    finally:
        proc.kill()  # SIGKILL: no shutdown hook, no commit
        proc.wait()

    restarted = subprocess.Popen([*cmd, "-"], env=env, cwd=ROOT)
    conn = await asyncpg.connect(namespace.stack.postgres_dsn.get_secret_value())
    try:

        async def both_applied() -> None:
            rows = await conn.fetch("SELECT event_id FROM crashtest.sink ORDER BY event_id")
            assert {r["event_id"] for r in rows} == {first["event_id"], second["event_id"]}

        await eventually(both_applied, timeout_s=60)
        deliveries = await conn.fetch("SELECT event_id, count(*) AS n FROM crashtest.deliveries GROUP BY event_id")
        counts = {r["event_id"]: r["n"] for r in deliveries}
        assert counts[first["event_id"]] == 2  # delivered again after the crash …
        assert counts[second["event_id"]] == 1
        assert await conn.fetchval("SELECT count(*) FROM crashtest.sink") == 2  # … and applied once
    finally:
        restarted.terminate()
        restarted.wait(30)
        await conn.close()
        await producer.stop()
        await registry.close()


async def test_an_output_the_broker_refuses_keeps_the_offset_uncommitted_until_it_is_delivered(
    namespace: Namespace,
) -> None:
    """The broker refuses the handler's output (bigger than the topic's max.message.bytes): aiokafka's
    flush() would return without an error; the runner must see the failed delivery, not commit, and
    handle the batch again until the output is delivered (here: once the topic's limit is raised)."""
    registry, serde, producer = await _clients(namespace)
    out = f"{namespace.prefix}out-tiny"
    group = f"{namespace.prefix}undelivered-test"
    admin = AIOKafkaAdminClient(**namespace.stack.kafka.client_kwargs())
    await admin.start()
    await admin.create_topics([NewTopic(out, 1, 1, topic_configs={"max.message.bytes": "2048"})])
    record = label()
    await producer.publish(LABELS, record)
    payload = os.urandom(8000)  # random: lz4 cannot shrink it under the limit
    attempts = 0

    async def handle(event: Event) -> None:
        nonlocal attempts
        attempts += 1
        await producer.send_raw("out-tiny", payload, key=event.event_id.encode())  # acknowledged by the runner

    runner = ConsumerRunner(
        group_id="undelivered-test",
        topics=[LABELS],
        kafka=namespace.stack.kafka,
        serde=serde,
        producer=producer,
        handler=handle,
    )

    async def committed() -> list[int]:
        offsets = await admin.list_consumer_group_offsets(group)
        return [m.offset for tp, m in offsets.items() if tp.topic == namespace.prefix + LABELS and m.offset >= 0]

    task = asyncio.create_task(runner.run())
    try:

        async def handled_again() -> None:
            assert attempts >= 3

        await eventually(handled_again, timeout_s=60)
        assert await committed() == []  # refused output: nothing committed
        assert not task.done()
        await admin.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, out, configs={"max.message.bytes": "1048588"})]
        )

        async def committed_after_delivery() -> None:
            assert await committed() == [1]

        await eventually(committed_after_delivery, timeout_s=60)
        reader = AIOKafkaConsumer(out, **namespace.stack.kafka.client_kwargs(), auto_offset_reset="earliest")
        await reader.start()
        try:
            batch = await reader.getmany(timeout_ms=5000)
            values = [r.value for recs in batch.values() for r in recs]
        finally:
            await reader.stop()
        assert values and all(v == payload for v in values)
    finally:
        runner.stop()
        await task
        await admin.close()
        await producer.stop()
        await registry.close()
