"""EventProducer.send_many: whole batches per partition, each record where send() would put it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from aiokafka.partitioner import DefaultPartitioner
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.record.memory_records import MemoryRecords

from driftline.catalog import FEATURES_VECTORS
from driftline.connect import KafkaConnection
from driftline.events import envelope
from driftline.producer import EventProducer
from driftline.records import FeatureVectorComputed
from driftline.serde import AvroSerde
from tests.unit.foundation.test_events_and_serde import FakeRegistry

PARTITIONS = [0, 1, 2, 3]


class FakeKafka:
    """The part of AIOKafkaProducer send_many uses: batches are kept, their futures resolved."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.batches: list[tuple[str, int, BatchBuilder]] = []

    async def partitions_for(self, topic: str) -> set[int]:
        return set(PARTITIONS)

    def create_batch(self) -> BatchBuilder:
        return BatchBuilder(self.batch_size, 0, is_transactional=False)  # 0: no compression

    async def send_batch(self, batch: BatchBuilder, topic: str, *, partition: int) -> asyncio.Future[Any]:
        self.batches.append((topic, partition, batch))
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut

    def records(self) -> list[tuple[int, bytes, bytes]]:
        """(partition, key, value) of every record sent, batch by batch."""
        out = []
        for _, partition, batch in self.batches:
            records = MemoryRecords(bytes(batch._build()))
            while records.has_next():
                for r in records.next_batch():  # type: ignore[union-attr]
                    out.append((partition, bytes(r.key), bytes(r.value)))
        return out


def vector(i: int) -> FeatureVectorComputed:
    return FeatureVectorComputed(
        **envelope("features", event_time=datetime(2025, 1, 1, tzinfo=UTC)),
        source_event_id=f"raw-{i}",
        entity_id=f"entity-{i % 7}",
        feature_set_version="1",
        features={"loan": float(i), "car": "3"},
    )


async def producer(batch_size: int) -> tuple[EventProducer, FakeKafka, AvroSerde]:
    serde = AvroSerde(FakeRegistry())  # type: ignore[arg-type]
    await serde.prepare(FEATURES_VECTORS)
    p = EventProducer(KafkaConnection("127.0.0.1:1"), serde, "test")
    kafka = FakeKafka(batch_size)
    await p.stop()  # the real client was never started: close it before it is replaced
    p._producer = kafka  # type: ignore[assignment]
    return p, kafka, serde


async def test_each_record_goes_where_send_would_put_it_in_order_one_batch_per_partition() -> None:
    p, kafka, serde = await producer(batch_size=256 * 1024)
    vectors = [vector(i) for i in range(40)]
    futures = await p.send_many(FEATURES_VECTORS, vectors)
    await asyncio.gather(*futures)
    partitions = {partition for _, partition, _ in kafka.batches}
    assert len(kafka.batches) == len(partitions) == len(futures)  # one batch per partition used
    sent = kafka.records()
    assert len(sent) == len(vectors)
    for partition, key, _ in sent:  # the key is the topic's key field; the partition send()'s choice
        assert partition == DefaultPartitioner()(key, PARTITIONS, PARTITIONS)
    by_key: dict[bytes, list[str]] = {}
    for _, key, value in sent:
        decoded, _ = await serde.decode(value, FEATURES_VECTORS)
        assert key == decoded["entity_id"].encode()
        by_key.setdefault(key, []).append(decoded["source_event_id"])
    for key, ids in by_key.items():  # an entity's vectors keep their order
        assert ids == [v.source_event_id for v in vectors if v.entity_id.encode() == key]


async def test_a_full_batch_is_sent_and_another_started() -> None:
    p, kafka, _ = await producer(batch_size=1024)
    vectors = [vector(i) for i in range(60)]
    futures = await p.send_many(FEATURES_VECTORS, vectors)
    assert len(kafka.batches) > 4 and len(futures) == len(kafka.batches)
    assert sorted(value for _, _, value in kafka.records()) == sorted(
        p.serde.encode(FEATURES_VECTORS, v.to_avro()) for v in vectors
    )
    assert await p.send_many(FEATURES_VECTORS, []) == []
