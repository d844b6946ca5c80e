"""The event envelope and the consumed-event type.

Every record carries ``event_id``, ``event_time``, ``produced_at``, ``producer``,
``correlation_id`` and ``causation_id``. A chain starts with a fresh correlation id (its first
event's id); every event caused by another inherits the correlation id and names its cause, so
``driftline trace`` can follow a chain across topics.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, TypedDict, TypeVar

# Namespace for ids derived from other ids (uuid5): the same input always yields the same id,
# which is what makes a recomputation after a crash an upsert rather than a duplicate.
_DERIVED_NS = uuid.UUID("6f1c3f55-6a47-4a8c-9d0e-2f5b8f0c4a11")
_DERIVED_NS_BYTES = _DERIVED_NS.bytes


def now_utc() -> datetime:
    return datetime.now(UTC)


def new_event_id() -> str:
    return str(uuid.uuid4())


def derived_event_id(*parts: object) -> str:
    """A deterministic UUID from its parts (e.g. a source event id and a feature-set version):
    ``str(uuid.uuid5(_DERIVED_NS, "|".join(parts)))``, written out because the features service
    derives one per event (3x faster without the UUID object; a unit test holds it to uuid5)."""
    name = "|".join([str(p) for p in parts]).encode()
    digest = bytearray(hashlib.sha1(_DERIVED_NS_BYTES + name, usedforsecurity=False).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class Envelope(TypedDict):
    """The fields every record starts with; spread into a record class: ``ModelTrained(**env, ...)``."""

    event_id: str
    event_time: datetime
    produced_at: datetime
    producer: str
    correlation_id: str
    causation_id: str | None


def envelope(
    producer: str,
    *,
    cause: object = None,
    correlation_id: str | None = None,
    event_time: datetime | None = None,
    event_id: str | None = None,
) -> Envelope:
    """Envelope fields for a new event; ``cause`` is the event that caused it: a typed record, an
    :class:`Event`, or a record dict."""
    eid = event_id or new_event_id()
    causation_id = None
    if cause is not None:
        cause_id, cause_correlation = _chain_of(cause)
        causation_id = cause_id
        correlation_id = correlation_id or cause_correlation
    now = now_utc()
    return {
        "event_id": eid,
        "event_time": event_time or now,
        "produced_at": now,
        "producer": producer,
        "correlation_id": correlation_id or eid,
        "causation_id": causation_id,
    }


def _chain_of(cause: object) -> tuple[str, str]:
    """(event_id, correlation_id) of a cause given as a record, an Event or a dict."""
    if isinstance(cause, Event):
        cause = cause.record if cause.record is not None else cause.value
    event_id = getattr(cause, "event_id", None)  # a typed record (before an ABC check: per event)
    if event_id is not None and not isinstance(cause, dict):
        return str(event_id), str(getattr(cause, "correlation_id"))  # noqa: B009
    if isinstance(cause, Mapping):
        return str(cause["event_id"]), str(cause["correlation_id"])
    raise TypeError(f"a cause is a record, an Event or a mapping, not {type(cause).__name__}")


def as_utc(value: datetime | int | float) -> datetime:
    """A timestamp as an aware UTC datetime (epoch millis accepted)."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.fromtimestamp(value / 1000.0, tz=UTC)


def epoch_ms(value: datetime) -> int:
    return int(as_utc(value).timestamp() * 1000)


R = TypeVar("R", covariant=True)


@dataclass(frozen=True, slots=True)
class Event(Generic[R]):
    """A consumed record: where it was read and its typed ``record`` (see :mod:`driftline.records`).

    ``value`` is the decoded dict as fastavro returned it, for generic tools (trace, DLQ replay);
    handlers take ``record``. Built without ``record``, the record is made from ``value`` with
    the record type the catalog names for the topic.
    """

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: dict[str, Any]
    raw: bytes
    schema_id: int
    timestamp_ms: int
    record: R = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.record is None:
            object.__setattr__(self, "record", record_of(self.topic, self.value))

    @property
    def event_id(self) -> str:
        return str(self.value["event_id"])

    @property
    def correlation_id(self) -> str:
        return str(self.value["correlation_id"])

    @property
    def causation_id(self) -> str | None:
        cause = self.value.get("causation_id")
        return None if cause is None else str(cause)


def record_of(topic: str, value: Mapping[str, Any], record_name: str | None = None) -> Any:
    """The typed record of a decoded value on ``topic`` (None for a topic outside the catalog)."""
    from driftline.catalog import default_catalog  # the catalog reads schemas/ on first use
    from driftline.records import RECORD_TYPES

    if record_name is None:
        t = default_catalog().get(topic)
        if t is None:
            return None
        record_name = t.record
    cls = RECORD_TYPES.get(record_name)
    return None if cls is None else cls.from_avro(value)
