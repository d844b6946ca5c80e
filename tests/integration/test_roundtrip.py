"""Every record type of the catalog goes through the real Kafka and schema registry and comes back equal."""

from __future__ import annotations

import io
import struct
from typing import Any

import fastavro
import pytest
from fastavro.utils import generate_one

from driftline.catalog import default_catalog, parsed_schema
from driftline.producer import EventProducer
from driftline.serde import AvroSerde, SchemaRegistryClient
from tests.support import Namespace, TopicReader


def _canonical(record_name: str, value: dict[str, Any]) -> dict[str, Any]:
    """What a record looks like after one Avro round trip (timestamps truncated to millis …)."""
    schema = parsed_schema(record_name)
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema, value)
    buf.seek(0)
    out: dict[str, Any] = fastavro.schemaless_reader(buf, schema, None)
    return out


async def test_every_record_type_round_trips_through_kafka_and_the_registry(namespace: Namespace) -> None:
    catalog = default_catalog()
    topics = catalog.names()
    registry = SchemaRegistryClient.from_settings(namespace.stack)
    serde = AvroSerde(registry, topic_prefix=namespace.prefix)
    producer = EventProducer(namespace.stack.kafka, serde, "roundtrip-test")
    await producer.start(topics)
    reader = await TopicReader(namespace, topics).start()
    sent: dict[str, dict[str, Any]] = {}
    try:
        for topic in catalog:
            record = _canonical(topic.record, generate_one(parsed_schema(topic.record)))
            record[topic.key] = f"key-{topic.name}"  # keys are strings in every record type
            sent[topic.name] = record
            await producer.publish(topic.name, record)
        await reader.wait_for(lambda evs: {e.topic for e in evs} >= set(topics), what="one record per topic")
        for topic in catalog:
            (event,) = reader.on(topic.name)
            assert event.value == sent[topic.name], topic.name
            assert event.key == f"key-{topic.name}".encode()
            # Confluent wire format with the id the registry holds for the topic's subject.
            magic, schema_id = struct.unpack(">bI", event.raw[:5])
            assert magic == 0
            assert schema_id == await registry.lookup(topic.subject(namespace.prefix), serde_schema_text(topic.record))
    finally:
        await reader.stop()
        await producer.stop()
        await registry.close()


def serde_schema_text(record: str) -> str:
    from driftline.catalog import canonical_schema_str

    return canonical_schema_str(record)


@pytest.mark.parametrize("record", ["RawEvent", "ModelTrained"])
async def test_a_record_that_breaks_its_schema_is_refused_before_it_is_sent(namespace: Namespace, record: str) -> None:
    from driftline.serde import EncodeError

    registry = SchemaRegistryClient.from_settings(namespace.stack)
    serde = AvroSerde(registry, topic_prefix=namespace.prefix)
    topic = next(t.name for t in default_catalog() if t.record == record)
    await serde.prepare(topic)
    value = _canonical(record, generate_one(parsed_schema(record)))
    value["event_time"] = "yesterday"
    with pytest.raises(EncodeError, match="event_time"):
        serde.encode(topic, value)
    await registry.close()
