"""No record of any topic carries a non-finite number: null where its schema allows one, left out
of a map of numbers, a clear encode error where a number is required (driftline.jsonsafe)."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest
from fastavro.utils import generate_many
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from driftline.catalog import default_catalog, load_schema_json
from driftline.jsonsafe import NotFinite, avro_sanitiser
from driftline.serde import AvroSerde, EncodeError
from tests.unit.foundation.test_events_and_serde import FakeRegistry

CATALOG = default_catalog()
TOPICS = CATALOG.names()
NON_FINITE = [math.nan, math.inf, -math.inf]


def poisoned(value: Any, rng: random.Random) -> Any:
    """``value`` with some of its floats (at any depth) replaced by NaN or an infinity."""
    if isinstance(value, float):
        return rng.choice(NON_FINITE) if rng.random() < 0.5 else value
    if isinstance(value, dict):
        return {k: poisoned(v, rng) for k, v in value.items()}
    if isinstance(value, list):
        return [poisoned(v, rng) for v in value]
    return value


def non_finite_in(value: Any) -> list[Any]:
    if isinstance(value, float):
        return [] if math.isfinite(value) else [value]
    if isinstance(value, dict):
        return [x for v in value.values() for x in non_finite_in(v)]
    if isinstance(value, list):
        return [x for v in value for x in non_finite_in(v)]
    return []


@pytest.mark.parametrize("topic", TOPICS)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1))
async def test_no_topic_carries_a_non_finite_number(topic: str, seed: int) -> None:
    serde = AvroSerde(FakeRegistry())  # type: ignore[arg-type]
    await serde.prepare(topic)
    schema = load_schema_json(CATALOG[topic].record)
    rng = random.Random(seed)
    (record,) = generate_many(schema, 1)
    record = poisoned(record, rng)
    try:
        data = serde.encode(topic, record)
    except EncodeError as exc:
        assert "not a finite number" in str(exc), exc  # a required number was not finite
        assert non_finite_in(record)
        return
    value, _ = await serde.decode(data, topic)
    assert non_finite_in(value) == [], f"{topic} carried {non_finite_in(value)}"


SCHEMA = {
    "type": "record",
    "name": "R",
    "fields": [
        {"name": "required", "type": "double"},
        {"name": "optional", "type": ["null", "double"], "default": None},
        {"name": "metrics", "type": {"type": "map", "values": "double"}},
        {"name": "features", "type": {"type": "map", "values": ["null", "double", "string"]}},
        {"name": "items", "type": {"type": "array", "items": {"type": "record", "name": "I", "fields": [
            {"name": "x", "type": "double"}]}}},
        {"name": "again", "type": ["null", "I"], "default": None},
        {"name": "label", "type": "string"},
    ],
}  # fmt: skip


def test_null_where_allowed_left_out_of_a_map_of_numbers_an_error_where_required() -> None:
    sanitise = avro_sanitiser(SCHEMA)
    record = {
        "required": 1.5,
        "optional": math.nan,
        "metrics": {"auc": math.nan, "accuracy": 0.9},
        "features": {"a": -math.inf, "b": 2.0, "c": "x"},
        "items": [{"x": 1.0}],
        "again": {"x": 2.0},
        "label": "nan",
    }
    assert sanitise(record, "R") == {
        **record,
        "optional": None,
        "metrics": {"accuracy": 0.9},
        "features": {"a": None, "b": 2.0, "c": "x"},
    }
    with pytest.raises(NotFinite, match=r"R\.items\[0\]\.x is inf"):
        sanitise({**record, "items": [{"x": math.inf}]}, "R")
    with pytest.raises(NotFinite, match=r"R\.again\.x is nan"):
        sanitise({**record, "again": {"x": math.nan}}, "R")
    with pytest.raises(NotFinite, match=r"R\.required is -inf"):
        sanitise({**record, "required": -math.inf}, "R")
