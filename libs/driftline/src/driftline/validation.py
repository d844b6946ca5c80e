"""Validation of what clients publish: events and labels, one at a time or in batches.

Shared by the ingestion service (HTTP) and the SDK's direct-Kafka path, so both refuse the same
input with the same words. Nothing here does I/O.

An event as clients send it (JSON over HTTP, a dict in the SDK)::

    {"type": "loan_application",              # project.event.type
     "event_id": "<uuid>",                    # optional; give it to make retries idempotent
     "event_time": "2025-01-31T12:00:00Z",    # optional ISO-8601 (or epoch millis); default: now
     "correlation_id": "...",                 # optional; default: the event's id
     "payload": {...}}                        # fields of the event type's Avro schema

A label::

    {"event_id": "<uuid of the labelled event>", "entity_id": "...", "label": "approve",
     "label_id": "<uuid>", "event_time": ..., "correlation_id": ...}   # the last three optional

A batch is ``{"events": [...]}`` (``{"labels": [...]}``) or a bare JSON array.

The event types come from the project file (``project.event``): the payload schema is
``schemas/events/<project.event.schema>.avsc`` (or ``<name>.avsc`` next to the project file), so
another project with another schema needs no code change. A payload schema must be a flat Avro
record (null, boolean, int, long, float, double, string, enum, and unions of these), because
``RawEvent.payload`` is a map of those values.

Every refusal names the field (``payload.salary``, ``type``, ``event_time``…) and the reason, and
has a machine-readable ``error_type``.
"""

from __future__ import annotations

import json
import math
import re
import sys
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, cast

import fastavro
import orjson
from fastavro.validation import validate as avro_validate

from driftline.catalog import EVENTS_RAW, LABELS, load_schema_json, schemas_dir
from driftline.events import Envelope, derived_event_id, envelope, new_event_id
from driftline.project import Project

Kind = Literal["events", "labels"]

# error_type values (stable: clients, the DLQ and runbooks match on them)
MALFORMED_JSON = "malformed_json"
INVALID_BODY = "invalid_body"
BODY_TOO_LARGE = "body_too_large"
BATCH_TOO_LARGE = "batch_too_large"
EMPTY_BATCH = "empty_batch"
NOT_AN_OBJECT = "not_an_object"
UNKNOWN_EVENT_TYPE = "unknown_event_type"
MISSING_FIELD = "missing_field"
WRONG_TYPE = "wrong_type"
UNKNOWN_FIELD = "unknown_field"
INVALID_VALUE = "invalid_value"
EVENT_ID_CONFLICT = "event_id_conflict"
ERROR_TYPES = frozenset(
    {
        MALFORMED_JSON,
        INVALID_BODY,
        BODY_TOO_LARGE,
        BATCH_TOO_LARGE,
        EMPTY_BATCH,
        NOT_AN_OBJECT,
        UNKNOWN_EVENT_TYPE,
        MISSING_FIELD,
        WRONG_TYPE,
        UNKNOWN_FIELD,
        INVALID_VALUE,
        EVENT_ID_CONFLICT,
    }
)
"""Every error type client input is refused with."""

EVENT_KEYS = frozenset({"type", "event_id", "event_time", "correlation_id", "payload"})
LABEL_KEYS = frozenset(
    {"event_id", "prediction_id", "entity_id", "label", "label_id", "event_time", "correlation_id", "project"}
)
MAX_ID_LENGTH = 200
MAX_PROBLEMS = 20  # per record; a payload with 10 000 bad fields gets a bounded answer
_PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "string"}
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_FLOAT_MAX = int(sys.float_info.max)
_INT_RANGE = {"int": (-(2**31), 2**31 - 1), "long": (-(2**63), 2**63 - 1)}


class SchemaNotSupported(ValueError):
    """The project's event schema cannot be carried in ``RawEvent.payload``."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a record: which field, what class of error, and why."""

    field: str | None
    error_type: str
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"field": self.field, "error_type": self.error_type, "reason": self.reason}


@dataclass(slots=True)
class Rejection:
    """A refused record (``index`` None: the whole request), with its original bytes for the DLQ."""

    index: int | None
    problems: list[Problem]
    original: bytes
    event_id: str | None = None
    correlation_id: str | None = None

    @property
    def error_type(self) -> str:
        return self.problems[0].error_type

    @property
    def reason(self) -> str:
        return "; ".join(f"{p.field}: {p.reason}" if p.field else p.reason for p in self.problems)

    def errors(self) -> list[dict[str, Any]]:
        return [{"index": self.index, **p.as_dict()} for p in self.problems]


@dataclass(slots=True)
class Valid:
    """A validated record ready to produce: the logical topic, the Avro record and its Kafka key."""

    index: int
    topic: str
    record: dict[str, Any]
    key: bytes

    @property
    def event_id(self) -> str:
        return str(self.record["event_id"])

    def fingerprint(self) -> bytes:
        """What must match when an event_id is seen again (a retry) — the content, not the envelope."""
        r = self.record
        if self.topic == LABELS:
            return orjson.dumps([r["labelled_event_id"], r["entity_id"], r["label"]])
        return orjson.dumps([r["event_type"], r["payload"]], option=orjson.OPT_SORT_KEYS)


def original_bytes(item: Any) -> bytes:
    """A refused item as JSON bytes, for items that came without bytes (the SDK's direct-Kafka path).

    Items of a request body get their exact bytes back with :func:`with_original_bytes`.
    """
    try:
        return orjson.dumps(item, default=str)
    except TypeError:  # e.g. integers beyond 64 bits, which the stdlib encoder handles
        try:
            return json.dumps(item, default=str).encode()
        except (TypeError, ValueError):
            return repr(item).encode(errors="replace")


def _describe(value: Any) -> str:
    """A short, safe description of a JSON value for an error message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int):
        text = str(value)
        return f"integer {text if len(text) <= 30 else text[:27] + '...'}"
    if isinstance(value, float):
        return f"number {value!r}"
    if isinstance(value, str):
        text = orjson.dumps(value[:60]).decode()
        return f"string {text}{'...' if len(value) > 60 else ''}"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


# --- payload schemas ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _FieldSpec:
    name: str
    type: Any  # parsed Avro type (named references resolved)
    type_text: str
    required: bool  # no default and not nullable
    default: Any
    has_default: bool
    nullable: bool
    number: bool  # a float/double field: ints become floats
    int_range: tuple[int, int] | None


class PayloadSchema:
    """A flat Avro record schema, parsed once, that checks and normalises payloads."""

    def __init__(self, avsc: Mapping[str, Any]) -> None:
        if avsc.get("type") != "record":
            raise SchemaNotSupported(f"event schema {avsc.get('name')!r} must be an Avro record")
        self.avsc = dict(avsc)
        self.name: str = str(avsc["name"])
        self.parsed: Any = cast(Any, fastavro.parse_schema(self.avsc))
        named: dict[str, Any] = self.parsed.get("__named_schemas", {})
        self.fields: dict[str, _FieldSpec] = {}
        for f in self.parsed["fields"]:
            ftype = self._resolve(f["type"], named, f["name"])
            branches = ftype if isinstance(ftype, list) else [ftype]
            names = [_type_name(b) for b in branches]
            nullable = "null" in names
            ranges = [_INT_RANGE[n] for n in names if n in _INT_RANGE]
            self.fields[f["name"]] = _FieldSpec(
                name=f["name"],
                type=ftype,
                type_text=" or ".join(_type_text(b) for b in branches),
                required="default" not in f and not nullable,
                default=f.get("default"),
                has_default="default" in f,
                nullable=nullable,
                number=any(n in ("float", "double") for n in names) and not any(n in _INT_RANGE for n in names),
                int_range=(min(r[0] for r in ranges), max(r[1] for r in ranges)) if ranges else None,
            )
        self._names = frozenset(self.fields)
        self._fill = [f for f in self.fields.values() if f.has_default or f.nullable]
        self._numbers = [f.name for f in self.fields.values() if f.number]

    @staticmethod
    def _resolve(ftype: Any, named: Mapping[str, Any], field_name: str) -> Any:
        if isinstance(ftype, list):
            return [PayloadSchema._resolve(b, named, field_name) for b in ftype]
        if isinstance(ftype, str) and ftype not in _PRIMITIVES:
            ftype = named.get(ftype, ftype)
        name = _type_name(ftype)
        if name not in _PRIMITIVES and name != "enum":
            raise SchemaNotSupported(
                f"field {field_name!r} has Avro type {name!r}: an event payload holds only null, boolean, "
                "int, long, float, double, string, enum and unions of these"
            )
        return ftype

    def describe(self) -> list[dict[str, Any]]:
        """Fields for humans and clients (GET /v1/schemas)."""
        out = []
        for f in self.parsed["fields"]:
            spec = self.fields[f["name"]]
            entry: dict[str, Any] = {"name": spec.name, "type": spec.type_text, "required": spec.required}
            if spec.has_default:
                entry["default"] = spec.default
            if f.get("doc"):
                entry["doc"] = f["doc"]
            out.append(entry)
        return out

    def json_schema(self) -> dict[str, Any]:
        """The payload as JSON Schema (for OpenAPI documents)."""
        props: dict[str, Any] = {}
        for spec in self.fields.values():
            branches = spec.type if isinstance(spec.type, list) else [spec.type]
            alternatives = [_json_type(b) for b in branches]
            props[spec.name] = alternatives[0] if len(alternatives) == 1 else {"anyOf": alternatives}
        return {
            "type": "object",
            "title": self.name,
            "properties": props,
            "required": [s.name for s in self.fields.values() if s.required],
            "additionalProperties": False,
        }

    def check(self, payload: Any, prefix: str = "payload") -> tuple[dict[str, Any] | None, list[Problem]]:
        """The normalised payload (defaults filled, ints of float fields as floats), or the problems."""
        if not isinstance(payload, dict):
            return None, [Problem(prefix, WRONG_TYPE, f"expected an object, got {_describe(payload)}")]
        # Fast path: fastavro's compiled validator accepts the whole record.
        if self._names.issuperset(payload) and avro_validate(payload, self.parsed, raise_errors=False):
            out = payload  # copied only when something changes: the caller's dict is never modified
            for f in self._fill:
                if f.name not in out:
                    out = out if out is not payload else dict(payload)
                    out[f.name] = f.default if f.has_default else None
            for name in self._numbers:
                v = out[name]
                if type(v) is int:
                    if not -_FLOAT_MAX <= v <= _FLOAT_MAX:
                        return None, [Problem(f"{prefix}.{name}", INVALID_VALUE, f"{_describe(v)} is too large")]
                    out = out if out is not payload else dict(payload)
                    out[name] = float(v)
                elif type(v) is float and not math.isfinite(v):
                    return None, [Problem(f"{prefix}.{name}", INVALID_VALUE, f"{v} is not a finite number")]
            return out, []
        return None, self._diagnose(payload, payload.keys() - self._names, prefix)

    def _diagnose(self, payload: dict[str, Any], extra: Iterable[Any], prefix: str) -> list[Problem]:
        problems = [
            Problem(f"{prefix}.{k}", UNKNOWN_FIELD, f"not a field of {self.name}")
            for k in sorted(map(str, extra))[:MAX_PROBLEMS]
        ]
        for spec in self.fields.values():
            where = f"{prefix}.{spec.name}"
            if spec.name not in payload:
                if spec.required:
                    problems.append(
                        Problem(where, MISSING_FIELD, f"required field of type {spec.type_text} is missing")
                    )
                continue
            value = payload[spec.name]
            if avro_validate(value, spec.type, raise_errors=False):
                continue
            if value is None:
                problems.append(Problem(where, MISSING_FIELD, f"must not be null (expected {spec.type_text})"))
            elif spec.int_range and type(value) is int and not spec.number:
                problems.append(Problem(where, INVALID_VALUE, f"{value} is out of range for {spec.type_text}"))
            elif isinstance(spec.type, dict) and spec.type.get("type") == "enum" and isinstance(value, str):
                problems.append(Problem(where, INVALID_VALUE, f"{value!r} is not one of {list(spec.type['symbols'])}"))
            else:
                problems.append(Problem(where, WRONG_TYPE, f"expected {spec.type_text}, got {_describe(value)}"))
        return problems[:MAX_PROBLEMS] or [Problem(prefix, INVALID_VALUE, f"does not match {self.name}")]

    def coerce_strings(self, row: Mapping[str, str | None]) -> dict[str, Any]:
        """A CSV row (every value a string) with values converted to the fields' types where they parse.

        Values that do not parse are kept as they are, so validation names the field and the reason.
        Empty cells of nullable fields become null; columns the schema does not know are kept.
        """
        out: dict[str, Any] = {}
        for name, text in row.items():
            spec = self.fields.get(name)
            if spec is None or text is None:
                out[name] = text
                continue
            out[name] = _coerce(text, spec)
        return out


def _coerce(text: str, spec: _FieldSpec) -> Any:
    branches = spec.type if isinstance(spec.type, list) else [spec.type]
    names = [_type_name(b) for b in branches]
    stripped = text.strip()
    if stripped == "" and spec.nullable:
        return None
    for name in names:
        try:
            if name in ("int", "long"):
                return int(stripped)
            if name in ("float", "double"):
                return float(stripped)
        except ValueError:
            continue
        if name == "boolean" and stripped.lower() in ("true", "false", "1", "0"):
            return stripped.lower() in ("true", "1")
    return text


def _type_name(t: Any) -> str:
    if isinstance(t, dict):
        inner = t.get("type")
        return str(inner) if isinstance(inner, str) else "complex"
    if isinstance(t, list):
        return "union"
    return str(t)


_JSON_TYPES = {
    "null": "null",
    "boolean": "boolean",
    "int": "integer",
    "long": "integer",
    "float": "number",
    "double": "number",
    "string": "string",
}


def _json_type(t: Any) -> dict[str, Any]:
    if isinstance(t, dict) and t.get("type") == "enum":
        return {"type": "string", "enum": list(t["symbols"])}
    return {"type": _JSON_TYPES.get(_type_name(t), "string")}


def _type_text(t: Any) -> str:
    if isinstance(t, dict) and t.get("type") == "enum":
        return f"enum {list(t['symbols'])}"
    if isinstance(t, dict) and t.get("logicalType"):
        return f"{t['type']} ({t['logicalType']})"
    return _type_name(t)


def find_event_schema(name: str, project_path: Path | None = None) -> dict[str, Any]:
    """The payload schema ``name``: ``schemas/events/<name>.avsc``, else ``<name>.avsc`` by the project file."""
    candidates = [schemas_dir() / "events" / f"{name}.avsc"]
    if project_path is not None:
        here = project_path.parent
        candidates += [here / f"{name}.avsc", here / "schemas" / f"{name}.avsc"]
    for path in candidates:
        if path.is_file():
            schema: dict[str, Any] = load_schema_json(path.stem, path.parent)
            return schema
    raise FileNotFoundError(f"event schema {name!r} not found in: {', '.join(map(str, candidates))}")


@dataclass(frozen=True)
class EventType:
    name: str
    schema: PayloadSchema
    entity_key: str
    project: str | None = None  # the project the event type belongs to (RawEvent.project)

    def describe(self) -> dict[str, Any]:
        return {
            "type": self.name,
            "schema": self.schema.name,
            "entity_key": self.entity_key,
            "project": self.project,
            "fields": self.schema.describe(),
            "avro": self.schema.avsc,
        }


# --- values of the envelope -------------------------------------------------------------------------


def _event_id(value: Any, where: str, problems: list[Problem]) -> str | None:
    if not isinstance(value, str):
        problems.append(Problem(where, WRONG_TYPE, f"expected a UUID string, got {_describe(value)}"))
        return None
    if _CANONICAL_UUID.fullmatch(value):
        return value  # already in the canonical form (the common case): skip the parse
    try:
        return str(uuid.UUID(value))
    except ValueError:
        problems.append(Problem(where, INVALID_VALUE, f"{_describe(value)} is not a UUID"))
        return None


def _event_time(value: Any, where: str, problems: list[Problem]) -> datetime | None:
    try:
        if isinstance(value, datetime):
            parsed = value
        elif isinstance(value, str):
            parsed = datetime.fromisoformat(value)
        elif isinstance(value, int) and not isinstance(value, bool):
            parsed = datetime.fromtimestamp(value / 1000.0, tz=UTC)
        else:
            problems.append(
                Problem(where, WRONG_TYPE, f"expected an ISO-8601 string or epoch millis, got {_describe(value)}")
            )
            return None
        parsed = parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
        if parsed.year in (1, 9999):
            parsed.astimezone(UTC)  # a time that UTC cannot hold fails here, not in the encoder
        return parsed
    except (ValueError, OverflowError, OSError) as exc:
        problems.append(Problem(where, INVALID_VALUE, f"{_describe(value)} is not a valid time: {exc}"))
        return None


def _short_string(value: Any, where: str, problems: list[Problem], *, required: bool = False) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        problems.append(Problem(where, WRONG_TYPE, f"expected a non-empty string, got {_describe(value)}"))
        return None
    if len(value) > MAX_ID_LENGTH:
        problems.append(Problem(where, INVALID_VALUE, f"longer than {MAX_ID_LENGTH} characters"))
        return None
    return value


def _not_an_object(item: Any, index: int, what: str) -> Rejection:
    """The refusal of an item that is not a JSON object (``what``: "an event", "a label")."""
    reason = f"{what} must be a JSON object, got {_describe(item)}"
    return Rejection(index, [Problem(None, NOT_AN_OBJECT, reason)], original_bytes(item))


def _unknown_fields(item: dict[Any, Any], known: frozenset[str], what: str) -> list[Problem]:
    """A problem for each key of ``item`` that is not one of ``known`` (``what``: "an event", "a label")."""
    if known.issuperset(item):  # the common case, without building the difference
        return []
    expected = ", ".join(sorted(known))
    return [
        Problem(str(k), UNKNOWN_FIELD, f"not {what} field (expected: {expected})")
        for k in sorted(map(str, item.keys() - known))
    ]


def _valid(index: int, topic: str, env: Envelope, fields: dict[str, Any], source: str) -> Valid:
    """A record ready to produce: envelope, the record's own fields, how it arrived; keyed by its entity."""
    record: dict[str, Any] = {**env, **fields, "source": source}
    return Valid(index, topic, record, str(fields["entity_id"]).encode())


# --- the validator ----------------------------------------------------------------------------------


@dataclass
class Validator:
    """Validates events and labels against a project: its event types and its label classes."""

    event_types: dict[str, EventType]
    label_classes: list[str]
    label_name: str = "label"
    classes_by_project: dict[str, list[str]] = field(default_factory=dict)  # a label naming its project
    _classes: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        self._classes = frozenset(self.label_classes)

    @classmethod
    def from_project(cls, project: Project) -> Validator:
        return cls.from_definition(project, find_event_schema(project.event.schema_name, project.path))

    @classmethod
    def from_definition(cls, project: Project, payload_schema: Mapping[str, Any]) -> Validator:
        """The validator of a project whose payload schema is given (a ``projects`` record's)."""
        spec = project.event
        schema = PayloadSchema(payload_schema)
        if spec.entity_key not in schema.fields:
            raise SchemaNotSupported(f"entity_key {spec.entity_key!r} is not a field of {schema.name}")
        return cls(
            {spec.type: EventType(spec.type, schema, spec.entity_key, project.name)},
            list(project.label.classes),
            project.label.name,
            {project.name: list(project.label.classes)},
        )

    @classmethod
    def merged(cls, validators: Sequence[Validator]) -> Validator:
        """One validator for several projects: every event type (each routes to its project); a
        label that names its project is one of that project's classes, else one of any project's."""
        event_types: dict[str, EventType] = {}
        classes: list[str] = []
        by_project: dict[str, list[str]] = {}
        for v in validators:
            event_types.update(v.event_types)
            classes += [c for c in v.label_classes if c not in classes]
            by_project.update(v.classes_by_project)
        names = {v.label_name for v in validators}
        return cls(event_types, classes, names.pop() if len(names) == 1 else "label", by_project)

    def describe(self) -> dict[str, Any]:
        return {
            "events": [t.describe() for t in self.event_types.values()],
            "labels": {
                "name": self.label_name,
                "classes": self.label_classes,
                "fields": {
                    "event_id": "UUID of the labelled event (required, unless prediction_id is given)",
                    "prediction_id": "instead of event_id: the prediction_id POST /v1/predict answered",
                    "entity_id": "entity of the labelled event (required)",
                    "label": f"one of {self.label_classes} (required)",
                    "label_id": "UUID of this label (optional; default derived from the other fields)",
                    "event_time": "ISO-8601 or epoch millis (optional)",
                    "correlation_id": "optional; default: the labelled event's id",
                    "project": "the labelled event's project (optional): the label is then checked "
                    "against that project's classes",
                },
                "classes_by_project": self.classes_by_project,
            },
        }

    # events

    def event(self, item: Any, index: int, *, producer: str, source: str) -> Valid | Rejection:
        """One event as a RawEvent record, or why not."""
        if not isinstance(item, dict):
            return _not_an_object(item, index, "an event")
        problems = _unknown_fields(item, EVENT_KEYS, "an event")
        raw_id = item.get("event_id")
        event_id = None if raw_id is None else _event_id(raw_id, "event_id", problems)
        raw_time = item.get("event_time")
        event_time = None if raw_time is None else _event_time(raw_time, "event_time", problems)
        correlation_id = _short_string(item.get("correlation_id"), "correlation_id", problems)
        etype = item.get("type")
        spec = self.event_types.get(etype) if isinstance(etype, str) else None
        payload: dict[str, Any] | None = None
        if spec is None:
            if etype is None:
                problems.append(Problem("type", MISSING_FIELD, "required field 'type' is missing"))
            else:
                known = ", ".join(sorted(self.event_types))
                problems.append(
                    Problem("type", UNKNOWN_EVENT_TYPE, f"{_describe(etype)} is not a known event type ({known})")
                )
        elif "payload" not in item:
            problems.append(Problem("payload", MISSING_FIELD, "required field 'payload' is missing"))
        else:
            payload, payload_problems = spec.schema.check(item["payload"])
            problems += payload_problems
        if problems or payload is None or spec is None:
            if not problems:  # pragma: no cover - defensive
                problems.append(Problem(None, INVALID_VALUE, "invalid event"))
            return Rejection(index, problems[:MAX_PROBLEMS], original_bytes(item), event_id, correlation_id)
        entity = payload.get(spec.entity_key)
        if entity is None or entity == "":
            problems = [Problem(f"payload.{spec.entity_key}", MISSING_FIELD, "the entity key must not be empty")]
            return Rejection(index, problems, original_bytes(item), event_id, correlation_id)
        env = envelope(producer, correlation_id=correlation_id, event_time=event_time, event_id=event_id)
        fields = {"event_type": etype, "entity_id": str(entity), "payload": payload, "project": spec.project}
        return _valid(index, EVENTS_RAW, env, fields, source)

    # labels

    def label(self, item: Any, index: int, *, producer: str, source: str) -> Valid | Rejection:
        """One label as a LabelRecorded record, or why not."""
        if not isinstance(item, dict):
            return _not_an_object(item, index, "a label")
        problems = _unknown_fields(item, LABEL_KEYS, "a label")
        # A prediction id (what POST /v1/predict of deployment answers) names the event it scored:
        # the request's own event, or the raw event it was sent.
        id_field = "prediction_id" if "prediction_id" in item and "event_id" not in item else "event_id"
        labelled = item.get(id_field)
        if "prediction_id" in item and "event_id" in item:
            problems.append(Problem("prediction_id", INVALID_VALUE, "give event_id or prediction_id, not both"))
            labelled_id = None
        elif labelled is None:
            problems.append(
                Problem("event_id", MISSING_FIELD, "the labelled event's id (or prediction_id) is required")
            )
            labelled_id = None
        else:
            labelled_id = _event_id(labelled, id_field, problems)
        if item.get("entity_id") is None:
            problems.append(Problem("entity_id", MISSING_FIELD, "the labelled event's entity id is required"))
            entity_id = None
        else:
            entity_id = _short_string(item.get("entity_id"), "entity_id", problems)
        project = item.get("project")
        classes = self.label_classes
        if project is not None:
            if not isinstance(project, str) or project not in self.classes_by_project:
                known = sorted(self.classes_by_project)
                problems.append(
                    Problem("project", INVALID_VALUE, f"{_describe(project)} is not a project here {known}")
                )
                project = None
            else:
                classes = self.classes_by_project[project]
        value = item.get("label")
        if value is None:
            problems.append(Problem("label", MISSING_FIELD, f"required; one of {classes}"))
        elif not isinstance(value, str) or value not in (self._classes if project is None else classes):
            of = f" of project {project!r}" if project is not None else ""
            problems.append(Problem("label", INVALID_VALUE, f"{_describe(value)} is not one of {classes}{of}"))
        raw_label_id = item.get("label_id")
        label_id = None if raw_label_id is None else _event_id(raw_label_id, "label_id", problems)
        raw_time = item.get("event_time")
        event_time = None if raw_time is None else _event_time(raw_time, "event_time", problems)
        correlation_id = _short_string(item.get("correlation_id"), "correlation_id", problems)
        if problems or labelled_id is None or entity_id is None:
            return Rejection(index, problems[:MAX_PROBLEMS], original_bytes(item), label_id, correlation_id)
        # Same labelled event, label (and time) → same id: a retried label is recognised downstream.
        label_id = label_id or derived_event_id("label", labelled_id, value, "" if raw_time is None else raw_time)
        cause = {"event_id": labelled_id, "correlation_id": correlation_id or labelled_id}
        env = envelope(producer, cause=cause, event_time=event_time, event_id=label_id)
        return _valid(
            index,
            LABELS,
            env,
            {"labelled_event_id": labelled_id, "entity_id": entity_id, "label": value, "project": project},
            source,
        )

    def validate(
        self, kind: Kind, items: Sequence[Any], *, producer: str, source: str, start: int = 0
    ) -> tuple[list[Valid], list[Rejection]]:
        """Validate every item; indexes count from ``start``."""
        check = self.event if kind == "events" else self.label
        valid: list[Valid] = []
        rejected: list[Rejection] = []
        for i, item in enumerate(items, start):
            out = check(item, i, producer=producer, source=source)
            (valid if type(out) is Valid else rejected).append(out)  # type: ignore[arg-type]
        return valid, rejected


def parse_body(data: bytes, kind: Kind, *, max_batch: int) -> list[Any] | Rejection:
    """A request body as a list of items (one event, ``{"events": [...]}`` or a bare array), or why not."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        return Rejection(None, [Problem(None, MALFORMED_JSON, f"body is not valid JSON: {exc}")], data)
    if isinstance(doc, list):
        items = doc
    elif isinstance(doc, dict) and set(doc) == {kind}:
        items = doc[kind]
        if not isinstance(items, list):
            return Rejection(None, [Problem(kind, INVALID_BODY, f"expected an array, got {_describe(items)}")], data)
    elif isinstance(doc, dict):
        items = [doc]  # one record
    else:
        reason = f"expected a JSON object or array, got {_describe(doc)}"
        return Rejection(None, [Problem(None, INVALID_BODY, reason)], data)
    if not items:
        return Rejection(None, [Problem(kind, EMPTY_BATCH, "the batch is empty")], data)
    if len(items) > max_batch:
        reason = f"{len(items)} records in one request; the limit is {max_batch}"
        return Rejection(None, [Problem(kind, BATCH_TOO_LARGE, reason)], data)
    return items


_WHITESPACE = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


def _skip(text: str, pos: int) -> int:
    m = _WHITESPACE.match(text, pos)
    return m.end() if m else pos


def _array_spans(text: str, pos: int) -> list[tuple[int, int]] | None:
    """Spans (character offsets) of the elements of the JSON array starting at ``text[pos]``."""
    if text[pos : pos + 1] != "[":
        return None
    spans: list[tuple[int, int]] = []
    pos = _skip(text, pos + 1)
    if text[pos : pos + 1] == "]":
        return spans
    while True:
        _, end = _DECODER.raw_decode(text, pos)
        spans.append((pos, end))
        pos = _skip(text, end)
        sep = text[pos : pos + 1]
        if sep == "]":
            return spans
        if sep != ",":
            return None
        pos = _skip(text, pos + 1)


def item_spans(data: bytes, kind: Kind) -> list[tuple[int, int]] | None:
    """Byte spans of the items :func:`parse_body` finds in ``data`` (None when they cannot be found).

    Walks the top level only, with the stdlib decoder (it tells where each value ends); only the
    error path pays for it, the fast path keeps orjson.
    """
    try:
        text = data.decode("utf-8")
        start = _skip(text, 0)
        first = text[start : start + 1]
        if first == "[":
            spans = _array_spans(text, start)
        elif first == "{":
            spans = _object_items(text, start, kind)
        else:
            return None
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if spans is None or text.isascii():
        return spans
    # Character offsets to byte offsets, in one pass (the text came from valid UTF-8: exact).
    to_byte: dict[int, int] = {}
    char = byte = 0
    for c in sorted({c for span in spans for c in span}):
        byte += len(text[char:c].encode())
        char = c
        to_byte[c] = byte
    return [(to_byte[a], to_byte[b]) for a, b in spans]


def _object_items(text: str, start: int, kind: Kind) -> list[tuple[int, int]] | None:
    """The items of a body that is an object: ``{"<kind>": [...]}`` (its elements) or one record."""
    keys: set[str] = set()
    batch_at: int | None = None
    pos = _skip(text, start + 1)
    while text[pos : pos + 1] == '"':
        key, pos = _DECODER.raw_decode(text, pos)
        pos = _skip(text, pos)
        if text[pos : pos + 1] != ":":
            return None
        pos = _skip(text, pos + 1)
        keys.add(key)
        if key == kind:
            batch_at = pos  # a repeated key: the last one wins, as in orjson
        _, pos = _DECODER.raw_decode(text, pos)
        pos = _skip(text, pos)
        if text[pos : pos + 1] != ",":
            break
        pos = _skip(text, pos + 1)
    if text[pos : pos + 1] != "}":
        return None
    if keys == {kind} and batch_at is not None:
        return _array_spans(text, batch_at)
    return [(start, pos + 1)]


def with_original_bytes(data: bytes, kind: Kind, rejections: Sequence[Rejection]) -> None:
    """Give each refused item of a request body its exact bytes in ``data`` (the DLQ keeps them).

    Only a one-record body or a batch of several; a body that is refused as a whole already
    carries itself. Where the spans cannot be found, the re-encoded item stays.
    """
    if not any(r.index is not None for r in rejections):
        return
    spans = item_spans(data, kind)
    if spans is None:
        return
    for r in rejections:
        if r.index is not None and 0 <= r.index < len(spans):
            a, b = spans[r.index]
            r.original = data[a:b]


def with_event_id(item: Any) -> Any:
    """A copy of an event with a fresh ``event_id`` where it has none, so that its retries carry the same id.

    (Labels need none: a label's id is derived from what it says.)
    """
    if isinstance(item, dict) and item.get("event_id") is None:
        return {**item, "event_id": new_event_id()}
    return item
