"""driftline_consumer_lag{group,topic,partition}: what a consumer group has not processed yet, as
the broker sees it (high watermark minus committed offset), kept current while a handler is stuck
and back to zero once the records are handled and committed."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from prometheus_client import REGISTRY

from driftline.catalog import LABELS
from driftline.consumer import ConsumerRunner
from driftline.events import Event, envelope
from driftline.history import topic_status
from driftline.producer import EventProducer
from driftline.serde import AvroSerde, SchemaRegistryClient
from tests.support import Namespace, eventually

RECORDS = 30


def label() -> dict[str, Any]:
    return {
        **envelope("test"),
        "labelled_event_id": str(uuid.uuid4()),
        "entity_id": "c-1",  # one key: one partition
        "label": "approve",
        "source": "test",
    }


def exported(group: str, topic: str) -> dict[int, float]:
    """The lag series of ``group`` on ``topic`` in this process's /metrics, by partition."""
    out = {}
    for metric in REGISTRY.collect():
        if metric.name != "driftline_consumer_lag":
            continue
        for sample in metric.samples:
            if sample.labels["group"] == group and sample.labels["topic"] == topic:
                out[int(sample.labels["partition"])] = sample.value
    return out


async def test_lag_is_exported_per_partition_while_stuck_and_drains_to_zero(namespace: Namespace) -> None:
    registry = SchemaRegistryClient.from_settings(namespace.stack)
    serde = AvroSerde(registry, topic_prefix=namespace.prefix)
    producer = EventProducer(namespace.stack.kafka, serde, "test")
    await producer.start([LABELS])
    for _ in range(RECORDS):
        await producer.publish(LABELS, label())
    await producer.flush()

    release = asyncio.Event()
    handled = 0

    async def handle(_: Event) -> None:
        nonlocal handled
        await release.wait()
        handled += 1

    runner = ConsumerRunner(
        group_id="lag-test",
        topics=[LABELS],
        kafka=namespace.stack.kafka,
        serde=serde,
        producer=producer,
        handler=handle,
    )
    group, topic = f"{namespace.prefix}lag-test", f"{namespace.prefix}{LABELS}"
    task = asyncio.create_task(runner.run())
    try:

        async def all_lagging() -> None:
            lags = exported(group, topic)
            assert sum(lags.values()) == RECORDS, lags
            assert len(lags) == 4  # every assigned partition has a series, idle ones at 0

        await eventually(all_lagging, timeout_s=60)
        assert handled == 0  # the handler is stuck on the first record: still reported

        release.set()

        async def drained() -> None:
            assert handled == RECORDS
            assert set(exported(group, topic).values()) == {0}

        await eventually(drained, timeout_s=60)
        # The same figure as the broker's view of the group (what kafka_exporter would report).
        status = {s.name: s.lag for s in await topic_status(namespace.stack)}[LABELS]
        assert status == {group: 0}
    finally:
        runner.stop()
        await task
        await producer.stop()
        await registry.close()
    assert exported(group, topic) == {}  # a stopped member reports nothing
