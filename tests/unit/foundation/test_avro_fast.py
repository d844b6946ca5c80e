"""The compiled encoder writes fastavro's bytes: for every catalog schema it covers, for any
record both accept; what it refuses, fastavro decides (in AvroSerde.encode)."""

from __future__ import annotations

import io
import math
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from driftline.avro_fast import Unsupported, compile_encoder, varint
from driftline.catalog import default_catalog, parsed_schema


def fastavro_bytes(schema: Any, record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema, record)
    return buf.getvalue()


def catalog_records() -> list[str]:
    return sorted({t.record for t in default_catalog()})


# Values of every Python type a record may carry, whatever the schema says: the encoder must
# either write fastavro's bytes or refuse.
ANY_SCALAR = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.integers(min_value=-300, max_value=300),
    st.floats(allow_nan=False, allow_infinity=False),
    st.floats(width=32, allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.binary(max_size=8),
    st.datetimes(
        min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.sampled_from([UTC, None])
    ),
)


def value_for(t: Any, depth: int = 0) -> st.SearchStrategy[Any]:
    """Mostly values of the type, sometimes of another type."""
    if isinstance(t, list):
        typed = st.one_of([value_for(b, depth) for b in t])
    elif isinstance(t, dict) and t.get("type") == "map":
        typed = st.dictionaries(st.text(max_size=6), value_for(t["values"], depth + 1), max_size=5)
    elif isinstance(t, dict) and t.get("type") == "array":
        typed = st.lists(value_for(t["items"], depth + 1), max_size=4)
    else:
        kind = t if isinstance(t, str) else t.get("logicalType") or t.get("type")
        typed = {
            "null": st.none(),
            "boolean": st.booleans(),
            "int": st.integers(min_value=-(2**31), max_value=2**31 - 1),
            "long": st.integers(min_value=-(2**63), max_value=2**63 - 1),
            "float": st.floats(width=32, allow_nan=False, allow_infinity=False),
            "double": st.floats(allow_nan=False, allow_infinity=False),
            "string": st.text(max_size=20),
            "bytes": st.binary(max_size=10),
            "timestamp-millis": st.datetimes(
                min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
            ),
        }.get(kind, ANY_SCALAR)
    return st.one_of(typed, typed, typed, ANY_SCALAR) if depth < 2 else typed


@st.composite
def record_of(draw: st.DrawFn, schema: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in schema["fields"]:
        if "default" in f and draw(st.integers(0, 9)) == 0:
            continue  # left to the default
        out[f["name"]] = draw(value_for(f["type"]))
    return out


COVERED = [r for r in catalog_records() if compile_encoder(parsed_schema(r)) is not None]


def test_the_hot_records_are_covered() -> None:
    for record in ("RawEvent", "FeatureVectorComputed", "PredictionMade", "LabelRecorded"):
        assert record in COVERED, record


@pytest.mark.parametrize("record", COVERED)
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_same_bytes_as_fastavro_or_refused(record: str, data: st.DataObject) -> None:
    schema = parsed_schema(record)
    encode = compile_encoder(schema)
    assert encode is not None
    rec = data.draw(record_of(schema))
    try:
        fast = encode(rec)
    except (ValueError, TypeError, OverflowError):
        return  # refused: AvroSerde.encode hands the record to fastavro
    assert fast == fastavro_bytes(schema, rec)
    assert fastavro.schemaless_reader(io.BytesIO(fast), schema, None) is not None


UNION = fastavro.parse_schema(
    {
        "type": "record",
        "name": "U",
        "fields": [
            {"name": "a", "type": ["null", "boolean", "long", "double", "string"]},
            {"name": "b", "type": ["null", "float", "double"]},
            {"name": "c", "type": ["null", "double", "long"]},
            {"name": "d", "type": "double"},
            {"name": "t", "type": {"type": "long", "logicalType": "timestamp-millis"}},
            {"name": "m", "type": {"type": "map", "values": ["null", "double", "string"]}},
        ],
    }
)


@pytest.mark.parametrize(
    "a, b, c, d",
    [
        (True, 1.5, 3, 2),  # bool to boolean; float to the later double; int to the first double
        (7, 2.0, 2**40, 1.0),
        ("x", None, -1, -0.0),
        (None, 3.25, 1.0, 1e300),
        (-(2**63), 0.0, 0, 5),
        (2**64, 1, 1.0, 0.5),  # beyond a long: fastavro's first branch that takes it is double
    ],
)
def test_union_branches_are_fastavro_s(a: Any, b: Any, c: Any, d: Any) -> None:
    encode = compile_encoder(UNION)
    assert encode is not None
    t = datetime(2026, 12, 4, 21, 30, 1, 999_999, tzinfo=timezone(timedelta(hours=5)))
    rec = {"a": a, "b": b, "c": c, "d": d, "t": t, "m": {"x": 1.0, "y": None, "z": "s", "w": 3}}
    assert encode(rec) == fastavro_bytes(UNION, rec)


@pytest.mark.parametrize(
    "field, value",
    [
        ("t", datetime(2026, 1, 1)),  # naive: fastavro reads it as local time
        ("t", 2**64),  # beyond a long
        ("d", "NaN"),  # fastavro's float() of a record field
        ("m", {"x": math.nan.__class__}),  # not a value at all
        ("a", [1]),
    ],
)
def test_what_it_does_not_write_exactly_it_refuses(field: str, value: Any) -> None:
    encode = compile_encoder(UNION)
    assert encode is not None
    rec: dict[str, Any] = {"a": None, "b": None, "c": None, "d": 1.0, "t": 0, "m": {}}
    rec[field] = value
    with pytest.raises((Unsupported, ValueError, TypeError)):
        encode(rec)


def test_a_missing_field_without_default_is_refused_and_one_with_a_default_written() -> None:
    schema = fastavro.parse_schema(
        {
            "type": "record",
            "name": "D",
            "fields": [{"name": "x", "type": "long"}, {"name": "p", "type": ["null", "string"], "default": None}],
        }
    )
    encode = compile_encoder(schema)
    assert encode is not None
    assert encode({"x": 5}) == fastavro_bytes(schema, {"x": 5})
    with pytest.raises(Unsupported):
        encode({"p": "a"})


def test_schemas_it_does_not_cover() -> None:
    nested = {
        "type": "record",
        "name": "N",
        "fields": [{"name": "r", "type": {"type": "record", "name": "In", "fields": []}}],
    }
    enum = {
        "type": "record",
        "name": "E",
        "fields": [{"name": "e", "type": {"type": "enum", "name": "K", "symbols": ["A"]}}],
    }
    decimal = {
        "type": "record",
        "name": "Dec",
        "fields": [{"name": "d", "type": {"type": "bytes", "logicalType": "decimal", "precision": 4, "scale": 2}}],
    }
    for schema in (nested, enum, decimal):
        assert compile_encoder(fastavro.parse_schema(schema)) is None


@given(st.integers(min_value=-(2**63), max_value=2**63 - 1))
def test_varint_is_avro_s_long(n: int) -> None:
    schema = fastavro.parse_schema({"type": "record", "name": "L", "fields": [{"name": "n", "type": "long"}]})
    assert varint(n) == fastavro_bytes(schema, {"n": n})
