"""The typed records (driftline.records) are generated from schemas/ and round-trip through Avro."""

from __future__ import annotations

import dataclasses
import io
from datetime import UTC, datetime
from typing import Any

import fastavro
import pytest

from driftline import codegen
from driftline.catalog import default_catalog, load_schema_json, parsed_schema
from driftline.events import Event, envelope
from driftline.producer import to_wire
from driftline.records import RECORD_TYPES, DriftDetected, DriftEvidence, ModelPromoted, ModelTrained

NOW = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)


def test_generated_module_is_current() -> None:
    """Fails when a schema changed and `python -m driftline.codegen` was not run."""
    assert codegen.target().read_text() == codegen.generate(), "run: python -m driftline.codegen"


def test_every_catalog_record_has_a_class() -> None:
    for topic in default_catalog():
        cls = RECORD_TYPES[topic.record]
        assert topic.record == cls.RECORD
        names = [f["name"] for f in load_schema_json(topic.record)["fields"]]
        assert [f.name for f in dataclasses.fields(cls)] == names


def _sample(t: Any, name: str) -> Any:
    if isinstance(t, list):
        return _sample(next(x for x in t if x != "null"), name)
    if isinstance(t, dict):
        kind = t["type"]
        if t.get("logicalType") == "timestamp-millis":
            return NOW
        if kind == "record":
            return {f["name"]: _sample(f["type"], f["name"]) for f in t["fields"]}
        if kind == "array":
            return [_sample(t["items"], name), _sample(t["items"], name)]
        if kind == "map":
            return {"a": _sample(t["values"], name)}
        t = kind
    primitives = {"string": f"{name}-x", "boolean": True, "int": 7, "long": 8, "double": 0.5, "float": 0.25}
    return b"\x00b" if t == "bytes" else primitives[t]


@pytest.mark.parametrize("record", sorted(RECORD_TYPES))
def test_round_trip_through_avro(record: str) -> None:
    schema = load_schema_json(record)
    value = _sample(schema, record)
    typed = RECORD_TYPES[record].from_avro(value)
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, parsed_schema(record), typed.to_avro())
    decoded = fastavro.schemaless_reader(io.BytesIO(buf.getvalue()), parsed_schema(record), None)
    assert RECORD_TYPES[record].from_avro(decoded) == typed


def test_records_are_immutable_and_nested_records_typed() -> None:
    drift = DriftDetected(
        **envelope("test"),
        episode_id="e",
        kind="performance",
        method="accuracy",
        statistic=0.5,
        threshold=0.1,
        window_start=NOW,
        window_end=NOW,
        window_size=10,
        features=("a",),
        model_name="m",
        model_version=1,
        evidence=(DriftEvidence(method="ks", statistic=0.3, threshold=0.1, drifted=True),),
    )
    with pytest.raises(AttributeError):
        drift.model_name = "other"  # type: ignore[misc]
    wire = drift.to_avro()
    assert wire["evidence"] == [
        {"feature": None, "method": "ks", "statistic": 0.3, "threshold": 0.1, "p_value": None, "drifted": True}
    ]
    assert DriftDetected.from_avro(wire).evidence[0].drifted is True


def test_a_record_on_the_wrong_topic_is_refused() -> None:
    promoted_topic = default_catalog()["models.promoted"]
    record = ModelTrained.from_avro(_sample(load_schema_json("ModelTrained"), "ModelTrained"))
    with pytest.raises(TypeError, match=r"models\.promoted carries ModelPromoted, not ModelTrained"):
        to_wire(promoted_topic, record)


def test_event_carries_the_typed_record_of_its_topic() -> None:
    value = _sample(load_schema_json("ModelPromoted"), "ModelPromoted")
    event: Event[ModelPromoted] = Event("models.promoted", 0, 3, None, value, b"", 1, 0)
    assert isinstance(event.record, ModelPromoted)
    assert event.record.version == value["version"]
    assert envelope("x", cause=event.record)["causation_id"] == value["event_id"]
