"""Validation shared by the ingestion service and the SDK (driftline.validation)."""

from __future__ import annotations

import io
import json
import math
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fastavro
import orjson
import pytest
import yaml
from fastavro.validation import validate
from hypothesis import given, settings
from hypothesis import strategies as st

from driftline.catalog import EVENTS_RAW, LABELS, parsed_schema
from driftline.project import EXAMPLE_PROJECT, load_project
from driftline.validation import (
    BATCH_TOO_LARGE,
    EMPTY_BATCH,
    INVALID_BODY,
    INVALID_VALUE,
    MALFORMED_JSON,
    MISSING_FIELD,
    NOT_AN_OBJECT,
    UNKNOWN_EVENT_TYPE,
    UNKNOWN_FIELD,
    WRONG_TYPE,
    PayloadSchema,
    Rejection,
    SchemaNotSupported,
    Valid,
    Validator,
    item_spans,
    parse_body,
    with_event_id,
)
from tests.unit.ingestion.fakes import LOAN, loan_event


@pytest.fixture(scope="module")
def validator() -> Validator:
    return Validator.from_project(load_project())


def _event(validator: Validator, item: Any) -> Valid | Rejection:
    return validator.event(item, 0, producer="ingestion", source="http")


def _problems(out: Valid | Rejection) -> list[tuple[str | None, str]]:
    assert isinstance(out, Rejection), out
    return [(p.field, p.error_type) for p in out.problems]


def test_a_valid_event_becomes_a_raw_event_keyed_by_entity(validator: Validator) -> None:
    item = loan_event(salary=52000)  # an integer for a double field
    item["correlation_id"] = "order-7"
    out = _event(validator, item)
    assert isinstance(out, Valid)
    assert out.topic == EVENTS_RAW
    assert out.key == b"c-1"
    r = out.record
    assert r["event_id"] == item["event_id"]
    assert (r["event_type"], r["entity_id"], r["source"], r["producer"]) == (
        "loan_application",
        "c-1",
        "http",
        "ingestion",
    )
    assert r["correlation_id"] == "order-7"
    assert r["payload"]["salary"] == 52000.0 and isinstance(r["payload"]["salary"], float)
    assert isinstance(r["payload"]["age"], int)
    assert item["payload"]["salary"] == 52000  # the caller's dict is left alone
    validate(r, parsed_schema("RawEvent"))


def test_an_event_without_id_or_time_gets_both(validator: Validator) -> None:
    item = {"type": "loan_application", "payload": dict(LOAN)}
    out = _event(validator, item)
    assert isinstance(out, Valid)
    uuid.UUID(out.event_id)
    assert out.record["correlation_id"] == out.event_id
    assert out.record["event_time"].tzinfo is not None


@pytest.mark.parametrize(
    ("event_time", "expected"),
    [
        ("2025-03-01T10:00:00Z", datetime(2025, 3, 1, 10, tzinfo=UTC)),
        ("2025-03-01T10:00:00", datetime(2025, 3, 1, 10, tzinfo=UTC)),
        ("2025-03-01T12:00:00+02:00", datetime(2025, 3, 1, 10, tzinfo=UTC)),
        (1740823200000, datetime(2025, 3, 1, 10, tzinfo=UTC)),
    ],
)
def test_event_time_accepts_iso_8601_and_epoch_millis(
    validator: Validator, event_time: Any, expected: datetime
) -> None:
    out = _event(validator, {**loan_event(), "event_time": event_time})
    assert isinstance(out, Valid)
    assert out.record["event_time"] == expected


def test_an_upper_case_uuid_is_normalised(validator: Validator) -> None:
    eid = str(uuid.uuid4())
    out = _event(validator, {**loan_event(), "event_id": eid.upper()})
    assert isinstance(out, Valid) and out.event_id == eid


@pytest.mark.parametrize(
    ("change", "field", "error_type", "words"),
    [
        ({"payload": {**LOAN, "salary": "a lot"}}, "payload.salary", WRONG_TYPE, 'expected double, got string "a lot"'),
        ({"payload": {**LOAN, "age": 41.5}}, "payload.age", WRONG_TYPE, "expected long, got number 41.5"),
        ({"payload": {**LOAN, "age": True}}, "payload.age", WRONG_TYPE, "got boolean true"),
        ({"payload": {**LOAN, "age": 2**64}}, "payload.age", INVALID_VALUE, "out of range"),
        ({"payload": {**LOAN, "car": None}}, "payload.car", MISSING_FIELD, "must not be null"),
        ({"payload": {**LOAN, "salary": 10**400}}, "payload.salary", INVALID_VALUE, "too large"),
        ({"payload": {k: v for k, v in LOAN.items() if k != "loan"}}, "payload.loan", MISSING_FIELD, "missing"),
        ({"payload": {**LOAN, "colour": "red"}}, "payload.colour", UNKNOWN_FIELD, "not a field of LoanApplication"),
        ({"payload": [1, 2]}, "payload", WRONG_TYPE, "expected an object"),
        ({"type": "loan_aplication"}, "type", UNKNOWN_EVENT_TYPE, "not a known event type (loan_application)"),
        ({"type": 7}, "type", UNKNOWN_EVENT_TYPE, "integer 7"),
        ({"event_id": "42"}, "event_id", INVALID_VALUE, "not a UUID"),
        ({"event_id": 42}, "event_id", WRONG_TYPE, "expected a UUID string"),
        ({"event_time": "yesterday"}, "event_time", INVALID_VALUE, "not a valid time"),
        ({"event_time": [2025]}, "event_time", WRONG_TYPE, "ISO-8601"),
        ({"correlation_id": ""}, "correlation_id", WRONG_TYPE, "non-empty string"),
        ({"colour": "red"}, "colour", UNKNOWN_FIELD, "not an event field"),
    ],
)
def test_each_bad_event_names_the_field_and_the_reason(
    validator: Validator, change: dict[str, Any], field: str, error_type: str, words: str
) -> None:
    out = _event(validator, {**loan_event(), **change})
    assert isinstance(out, Rejection)
    problem = next(p for p in out.problems if p.field == field)
    assert problem.error_type == error_type
    assert words in problem.reason
    assert json.loads(out.original) == {**loan_event(), **change} | {"event_id": json.loads(out.original)["event_id"]}


def test_missing_type_and_payload_are_reported(validator: Validator) -> None:
    assert _problems(_event(validator, {"payload": LOAN})) == [("type", MISSING_FIELD)]
    assert _problems(_event(validator, {"type": "loan_application"})) == [("payload", MISSING_FIELD)]
    assert _problems(_event(validator, "hello")) == [(None, NOT_AN_OBJECT)]


def test_every_problem_of_an_event_is_reported_not_just_the_first(validator: Validator) -> None:
    item = {"type": "loan_application", "event_id": "x", "payload": {**LOAN, "salary": "?", "age": "?"}}
    fields = {f for f, _ in _problems(_event(validator, item))}
    assert fields == {"event_id", "payload.salary", "payload.age"}


def test_non_finite_numbers_from_python_callers_are_refused(validator: Validator) -> None:
    assert _problems(_event(validator, loan_event(loan=math.inf))) == [("payload.loan", INVALID_VALUE)]


def test_an_empty_entity_key_is_refused(validator: Validator) -> None:
    assert _problems(_event(validator, loan_event(customer_id=""))) == [("payload.customer_id", MISSING_FIELD)]


def test_same_content_has_the_same_fingerprint_whatever_the_envelope(validator: Validator) -> None:
    a = _event(validator, loan_event())
    b = _event(validator, {**loan_event(), "event_time": "2020-01-01T00:00:00Z"})
    c = _event(validator, loan_event(loan=1.0))
    assert isinstance(a, Valid) and isinstance(b, Valid) and isinstance(c, Valid)
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


# --- labels -------------------------------------------------------------------------------------------


def test_a_label_becomes_a_label_recorded_linked_to_its_event(validator: Validator) -> None:
    eid = str(uuid.uuid4())
    out = validator.label(
        {"event_id": eid, "entity_id": "c-1", "label": "approve"}, 0, producer="ingestion", source="http"
    )
    assert isinstance(out, Valid)
    r = out.record
    assert out.topic == LABELS and out.key == b"c-1"
    assert (r["labelled_event_id"], r["label"], r["causation_id"], r["correlation_id"]) == (eid, "approve", eid, eid)
    validate(r, parsed_schema("LabelRecorded"))
    again = validator.label({"event_id": eid, "entity_id": "c-1", "label": "approve"}, 0, producer="x", source="y")
    other = validator.label({"event_id": eid, "entity_id": "c-1", "label": "deny"}, 0, producer="x", source="y")
    assert isinstance(again, Valid) and isinstance(other, Valid)
    assert again.event_id == out.event_id != other.event_id  # a retry has the same id, a correction does not


def test_a_label_can_name_a_prediction_id_instead_of_an_event_id(validator: Validator) -> None:
    pid = str(uuid.uuid4())
    out = validator.label({"prediction_id": pid, "entity_id": "c-1", "label": "deny"}, 0, producer="i", source="http")
    assert isinstance(out, Valid) and out.record["labelled_event_id"] == pid  # what monitoring joins on
    both = validator.label(
        {"prediction_id": pid, "event_id": pid, "entity_id": "c-1", "label": "deny"}, 0, producer="i", source="http"
    )
    assert isinstance(both, Rejection) and both.problems[0].field == "prediction_id"
    bad = validator.label({"prediction_id": "nope", "entity_id": "c-1", "label": "deny"}, 0, producer="i", source="h")
    assert isinstance(bad, Rejection) and (bad.problems[0].field, bad.problems[0].error_type) == (
        "prediction_id",
        INVALID_VALUE,
    )


@pytest.mark.parametrize(
    ("label", "field", "error_type"),
    [
        ({"label": "maybe"}, "label", INVALID_VALUE),
        ({"label": 1}, "label", INVALID_VALUE),
        ({"label": None}, "label", MISSING_FIELD),
        ({"event_id": None}, "event_id", MISSING_FIELD),
        ({"event_id": "nope"}, "event_id", INVALID_VALUE),
        ({"entity_id": None}, "entity_id", MISSING_FIELD),
        ({"entity_id": 5}, "entity_id", WRONG_TYPE),
        ({"score": 0.3}, "score", UNKNOWN_FIELD),
    ],
)
def test_bad_labels_are_refused_with_the_field(
    validator: Validator, label: dict[str, Any], field: str, error_type: str
) -> None:
    item = {"event_id": str(uuid.uuid4()), "entity_id": "c-1", "label": "deny", **label}
    out = validator.label(item, 4, producer="ingestion", source="http")
    assert isinstance(out, Rejection)
    assert (field, error_type) in [(p.field, p.error_type) for p in out.problems]
    assert out.errors()[0]["index"] == 4


# --- request bodies -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "count"),
    [
        (b'{"type": "loan_application", "payload": {}}', 1),
        (b'{"events": [{}, {}, {}]}', 3),
        (b"[{}, {}]", 2),
        (b'{"events": {"type": "x"}}', None),
    ],
)
def test_bodies_are_one_event_a_batch_or_an_array(body: bytes, count: int | None) -> None:
    out = parse_body(body, "events", max_batch=10)
    if count is None:
        assert isinstance(out, Rejection) and out.error_type == INVALID_BODY
    else:
        assert isinstance(out, list) and len(out) == count


@pytest.mark.parametrize(
    ("body", "error_type"),
    [
        (b'{"type": "loan_application",', MALFORMED_JSON),
        (b"", MALFORMED_JSON),
        (b"\xff\xfe", MALFORMED_JSON),
        (b'{"a": NaN}', MALFORMED_JSON),
        (b"42", INVALID_BODY),
        (b'"text"', INVALID_BODY),
        (b"[]", EMPTY_BATCH),
        (b'{"events": []}', EMPTY_BATCH),
        (b"[" + b"{}," * 10 + b"{}]", BATCH_TOO_LARGE),
    ],
)
def test_bad_bodies_are_refused_as_a_whole(body: bytes, error_type: str) -> None:
    out = parse_body(body, "events", max_batch=10)
    assert isinstance(out, Rejection)
    assert out.error_type == error_type and out.index is None and out.original == body


def test_a_batch_is_validated_item_by_item(validator: Validator) -> None:
    items = [loan_event(), {"type": "nope"}, loan_event(), 3]
    valid, rejected = validator.validate("events", items, producer="p", source="s", start=10)
    assert [v.index for v in valid] == [10, 12]
    assert [r.index for r in rejected] == [11, 13]


def test_with_event_id_adds_an_id_only_where_missing() -> None:
    item = {"type": "t", "payload": {}}
    given = with_event_id(item)
    assert uuid.UUID(given["event_id"]) and "event_id" not in item
    assert with_event_id(given) is given
    assert with_event_id("x") == "x"


# --- another project, another schema -------------------------------------------------------------------


SENSOR = {
    "type": "record",
    "name": "SensorReading",
    "fields": [
        {"name": "sensor", "type": "long"},
        {"name": "kind", "type": {"type": "enum", "name": "Kind", "symbols": ["temp", "hum"]}},
        {"name": "value", "type": "float"},
        {"name": "note", "type": ["null", "string"]},
        {"name": "ok", "type": "boolean", "default": True},
    ],
}


def _sensor_project(tmp_path: Path, schema: dict[str, Any]) -> Path:
    doc = yaml.safe_load(EXAMPLE_PROJECT.read_text())
    doc["event"] = {"type": "reading", "schema": "SensorReading", "entity_key": "sensor"}
    doc["label"] = {"name": "faulty", "classes": ["no", "yes"], "positive_class": "yes"}
    (tmp_path / "SensorReading.avsc").write_text(json.dumps(schema))
    (tmp_path / "project.yaml").write_text(yaml.safe_dump(doc))
    return tmp_path / "project.yaml"


def test_another_project_with_another_schema_needs_no_code_change(tmp_path: Path) -> None:
    validator = Validator.from_project(load_project(_sensor_project(tmp_path, SENSOR)))
    out = validator.event(
        {"type": "reading", "payload": {"sensor": 9, "kind": "temp", "value": 21}}, 0, producer="p", source="s"
    )
    assert isinstance(out, Valid)
    assert out.key == b"9"
    assert out.record["payload"] == {"sensor": 9, "kind": "temp", "value": 21.0, "note": None, "ok": True}
    validate(out.record, parsed_schema("RawEvent"))
    bad = validator.event(
        {"type": "reading", "payload": {"sensor": 9, "kind": "wind", "value": 1}}, 0, producer="p", source="s"
    )
    assert isinstance(bad, Rejection)
    assert [(p.field, p.error_type) for p in bad.problems] == [("payload.kind", INVALID_VALUE)]
    assert "not one of ['temp', 'hum']" in bad.reason
    wrong_type = validator.event({"type": "loan_application", "payload": LOAN}, 0, producer="p", source="s")
    assert isinstance(wrong_type, Rejection) and wrong_type.error_type == UNKNOWN_EVENT_TYPE
    label = validator.label(
        {"event_id": str(uuid.uuid4()), "entity_id": "9", "label": "yes"}, 0, producer="p", source="s"
    )
    assert isinstance(label, Valid)


def test_a_schema_that_a_payload_map_cannot_hold_is_refused_at_start(tmp_path: Path) -> None:
    nested = {**SENSOR, "fields": [*SENSOR["fields"], {"name": "tags", "type": {"type": "array", "items": "string"}}]}
    with pytest.raises(SchemaNotSupported, match="'tags'"):
        Validator.from_project(load_project(_sensor_project(tmp_path, nested)))


def test_csv_rows_are_converted_to_the_field_types() -> None:
    schema = PayloadSchema(SENSOR)
    row = schema.coerce_strings({"sensor": "9", "kind": "temp", "value": "2.5", "note": "", "ok": "false", "x": "1"})
    assert row == {"sensor": 9, "kind": "temp", "value": 2.5, "note": None, "ok": False, "x": "1"}
    assert schema.coerce_strings({"sensor": "nine"}) == {"sensor": "nine"}  # left for validation to refuse


def test_describe_lists_types_fields_and_label_classes(validator: Validator) -> None:
    doc = validator.describe()
    (loan,) = doc["events"]
    assert loan["type"] == "loan_application" and loan["entity_key"] == "customer_id"
    assert {"name": "salary", "type": "double", "required": True} in [
        {k: f[k] for k in ("name", "type", "required")} for f in loan["fields"]
    ]
    assert doc["labels"]["classes"] == ["deny", "approve"]
    js = validator.event_types["loan_application"].schema.json_schema()
    assert js["properties"]["age"] == {"type": "integer"} and "customer_id" in js["required"]


# --- property: whatever a Python caller passes, validation answers and valid records encode ------------

_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8) | st.datetimes(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
_items = st.fixed_dictionaries(
    {"type": st.just("loan_application") | _values},
    optional={
        "event_id": st.uuids().map(str) | _values,
        "event_time": st.datetimes(timezones=st.timezones()) | st.datetimes().map(str) | st.integers() | _values,
        "correlation_id": _values,
        "payload": st.fixed_dictionaries({}, optional={k: _values | st.just(v) for k, v in LOAN.items()}),
    },
)


@settings(max_examples=500, deadline=None)
@given(item=_items | _values)
def test_any_python_value_is_answered_and_every_valid_record_encodes(item: Any) -> None:
    validator = Validator.from_project(load_project())
    out = validator.event(item, 0, producer="sdk", source="sdk")
    if isinstance(out, Valid):
        fastavro.schemaless_writer(io.BytesIO(), parsed_schema("RawEvent"), out.record)
    else:
        assert out.problems and all(p.reason for p in out.problems) and isinstance(out.original, bytes)


# --- property: the byte span of every item of a body is found, however the body is written ------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=10,
)
_space = st.sampled_from(["", " ", "\n", "\t ", "\r\n  "])


@settings(max_examples=300, deadline=None)
@given(
    items=st.lists(_json, min_size=1, max_size=5),
    shape=st.sampled_from(["array", "batch", "one"]),
    ascii_only=st.booleans(),
    indent=st.none() | st.integers(0, 3),
    pad=_space,
)
def test_item_spans_find_each_item_of_a_body(
    items: list[Any], shape: str, ascii_only: bool, indent: int | None, pad: str
) -> None:
    if shape == "one":
        items = [{"x": items}]
    doc: Any = {"events": items} if shape == "batch" else items[0] if shape == "one" else items
    data = (pad + json.dumps(doc, ensure_ascii=ascii_only, indent=indent) + pad).encode()
    parsed = parse_body(data, "events", max_batch=100)
    spans = item_spans(data, "events")
    if isinstance(parsed, Rejection):  # e.g. {"events": []}
        return
    assert spans is not None and len(spans) == len(parsed)
    for (a, b), item in zip(spans, parsed, strict=True):
        assert orjson.loads(data[a:b]) == item  # parsed as parse_body parses


def test_item_spans_follow_parse_body_on_odd_objects() -> None:
    # Another key beside "events": one record, not a batch; a repeated key: the last one counts.
    assert item_spans(b'{"events": [1], "x": 2}', "events") == [(0, 23)]
    assert item_spans(b'{"events": [1], "events": [ 22 ,3]}', "events") == [(28, 30), (32, 33)]
    assert item_spans(b"\xff", "events") is None
    assert item_spans(b"[" * 5000 + b"]" * 5000, "events") in (None, [(1, 9999)])


# --- labels on an install of several projects ---------------------------------------------------------


@pytest.fixture(scope="module")
def two_projects() -> Validator:
    machine = load_project(Path(EXAMPLE_PROJECT).parents[1] / "machine_health" / "project.yaml")
    return Validator.merged([Validator.from_project(load_project()), Validator.from_project(machine)])


def _label(v: Validator, **fields: Any) -> Any:
    item = {"event_id": str(uuid.uuid4()), "entity_id": "e-1", **fields}
    return v.label(item, 0, producer="ingestion", source="http")


def test_a_label_naming_its_project_is_checked_against_that_projects_classes(two_projects: Validator) -> None:
    ok = _label(two_projects, label="failure", project="machine-health")
    assert isinstance(ok, Valid) and ok.record["project"] == "machine-health"
    wrong = _label(two_projects, label="approve", project="machine-health")  # the loan project's class
    assert isinstance(wrong, Rejection)
    assert [(p.field, p.error_type) for p in wrong.problems] == [("label", INVALID_VALUE)]
    assert "of project 'machine-health'" in wrong.problems[0].reason
    unknown = _label(two_projects, label="approve", project="nope")
    assert isinstance(unknown, Rejection) and [p.field for p in unknown.problems] == ["project"]
    # Without a project, a class of any project is accepted (and the record names none).
    either = _label(two_projects, label="approve")
    assert isinstance(either, Valid) and either.record["project"] is None
    validate(ok.record, parsed_schema("LabelRecorded"))  # the record is valid Avro, project included
