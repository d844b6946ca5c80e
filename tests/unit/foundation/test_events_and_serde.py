"""Envelope rules and the Avro serde's wire format, with an in-memory registry."""

from __future__ import annotations

import json
import struct
import uuid
from typing import Any

import fastavro
import pytest
from hypothesis import given
from hypothesis import strategies as st

from driftline.catalog import EVENTS_RAW, LABELS
from driftline.events import derived_event_id, envelope
from driftline.serde import AvroSerde, DecodeError, EncodeError, RegistryError


class FakeRegistry:
    """Just enough of SchemaRegistryClient for the serde: ids per (subject, schema text)."""

    def __init__(self) -> None:
        self.ids: dict[tuple[str, str], int] = {}
        self.by_id: dict[int, Any] = {}

    async def lookup(self, subject: str, schema: str) -> int | None:
        return self.ids.get((subject, schema))

    async def register(self, subject: str, schema: str) -> int:
        key = (subject, schema)
        if key not in self.ids:
            self.ids[key] = len(self.ids) + 1
            self.by_id[self.ids[key]] = fastavro.parse_schema(json.loads(schema))
        return self.ids[key]

    async def schema_by_id(self, schema_id: int) -> Any:
        if schema_id not in self.by_id:
            raise RegistryError(f"GET /schemas/ids/{schema_id} → 404")
        return self.by_id[schema_id]


def raw_event(**overrides: Any) -> dict[str, Any]:
    return {
        **envelope("test"),
        "event_type": "loan_application",
        "entity_id": "c-1",
        "payload": {"salary": 50_000.0, "age": 31, "flag": True, "name": "x", "gone": None},
        "source": "sdk",
        **overrides,
    }


def test_a_chain_starts_with_its_first_event_and_inherits_correlation() -> None:
    first = envelope("a")
    assert first["correlation_id"] == first["event_id"]
    assert first["causation_id"] is None
    second = envelope("b", cause=first)
    assert second["correlation_id"] == first["correlation_id"]
    assert second["causation_id"] == first["event_id"]
    assert second["event_id"] != first["event_id"]


def test_derived_ids_are_stable_and_distinct() -> None:
    assert derived_event_id("e1", "v1") == derived_event_id("e1", "v1")
    assert derived_event_id("e1", "v1") != derived_event_id("e1", "v2")


@given(st.lists(st.one_of(st.text(), st.integers()), min_size=1, max_size=3))
def test_derived_ids_are_uuid5_of_the_joined_parts(parts: list[object]) -> None:
    # The ids are stored (online store, sinks' upserts): the fast form must stay uuid5's.
    expected = str(uuid.uuid5(uuid.UUID("6f1c3f55-6a47-4a8c-9d0e-2f5b8f0c4a11"), "|".join(map(str, parts))))
    assert derived_event_id(*parts) == expected


async def test_encode_uses_confluent_framing_and_round_trips() -> None:
    serde = AvroSerde(FakeRegistry())  # type: ignore[arg-type]
    await serde.prepare(EVENTS_RAW)
    record = raw_event()
    data = serde.encode(EVENTS_RAW, record)
    magic, schema_id = struct.unpack(">bI", data[:5])
    assert (magic, schema_id) == (0, 1)
    value, sid = await serde.decode(data, EVENTS_RAW)
    assert sid == 1
    assert value["payload"] == record["payload"]
    assert value["event_id"] == record["event_id"]


async def test_encode_error_names_the_field() -> None:
    serde = AvroSerde(FakeRegistry())  # type: ignore[arg-type]
    await serde.prepare(LABELS)
    bad = {**envelope("t"), "labelled_event_id": "e", "entity_id": "c", "label": ["not", "a", "label"]}
    with pytest.raises(EncodeError, match="label"):
        serde.encode(LABELS, bad)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"\x00\x00", "shorter than"),
        (b"\x01\x00\x00\x00\x01abc", "magic byte 1"),
        (b"\x00\x00\x00\x00\x63abc", "schema id 99 is unknown"),
        (b"\x00\x00\x00\x00\x01\xff\xff\xff", "does not decode"),
        (b'{"json": "instead of avro"}', "magic byte"),
    ],
)
async def test_decode_refuses_poison_with_a_reason(data: bytes, reason: str) -> None:
    serde = AvroSerde(FakeRegistry())  # type: ignore[arg-type]
    await serde.prepare(EVENTS_RAW)
    with pytest.raises(DecodeError, match=reason):
        await serde.decode(data, EVENTS_RAW)


async def test_older_writer_schema_is_resolved_to_the_local_reader_schema() -> None:
    registry = FakeRegistry()
    serde = AvroSerde(registry)  # type: ignore[arg-type]
    # An older LabelRecorded without the 'source' field (which has a default now).
    from driftline.catalog import load_schema_json

    old = dict(load_schema_json("LabelRecorded"))
    old["fields"] = [f for f in old["fields"] if f["name"] != "source"]
    old_id = await registry.register("labels-value", json.dumps(old))
    import io

    buf = io.BytesIO()
    buf.write(struct.pack(">bI", 0, old_id))
    record = {**envelope("t"), "labelled_event_id": "e", "entity_id": "c", "label": "approve"}
    fastavro.schemaless_writer(buf, fastavro.parse_schema(old), record)
    value, _ = await serde.decode(buf.getvalue(), LABELS)
    assert value["source"] == "http"  # the reader's default fills the field the writer did not have


async def test_decode_many_decodes_a_batch_and_refuses_each_poison_record_in_its_place() -> None:
    registry = FakeRegistry()
    serde = AvroSerde(registry)  # type: ignore[arg-type]
    await serde.prepare(EVENTS_RAW)
    good = [raw_event(entity_id=f"c-{i}") for i in range(3)]
    items: list[bytes | None] = [serde.encode(EVENTS_RAW, good[0]), b"\x00\x00", None]
    items += [serde.encode(EVENTS_RAW, good[1]), b"\x00\x00\x00\x00\x63abc", serde.encode(EVENTS_RAW, good[2])]
    out = await serde.decode_many(items, EVENTS_RAW)
    assert len(out) == len(items)
    decoded = [item for item in out if not isinstance(item, DecodeError)]
    assert [value["entity_id"] for value, _ in decoded] == ["c-0", "c-1", "c-2"]
    assert [isinstance(item, DecodeError) for item in out] == [False, True, True, False, True, False]
    assert "shorter than" in str(out[1]) and "empty" in str(out[2]) and "schema id 99 is unknown" in str(out[4])
    # Same answers as one decode per record.
    for data, item in zip(items, out, strict=True):
        if isinstance(item, DecodeError):
            with pytest.raises(DecodeError):
                await serde.decode(data, EVENTS_RAW)
        else:
            assert await serde.decode(data, EVENTS_RAW) == item


async def test_decode_many_raises_when_the_registry_is_unreachable() -> None:
    class DownRegistry(FakeRegistry):
        async def schema_by_id(self, schema_id: int) -> Any:
            raise RegistryError("schema registry unreachable")

    serde = AvroSerde(DownRegistry())  # type: ignore[arg-type]
    await serde.prepare(EVENTS_RAW)
    data = serde.encode(EVENTS_RAW, raw_event())
    with pytest.raises(RegistryError):  # transient: the whole batch is retried, no record refused
        await serde.decode_many([data, data], EVENTS_RAW)
