"""The event envelope and the consumed-event type.

Every record carries ``event_id``, ``event_time``, ``produced_at``, ``producer``,
``correlation_id`` and ``causation_id``. A chain starts with a fresh correlation id (its first
event's id); every event caused by another inherits the correlation id and names its cause, so
``driftline trace`` can follow a chain across topics.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

# Namespace for ids derived from other ids (uuid5): the same input always yields the same id,
# which is what makes a recomputation after a crash an upsert rather than a duplicate.
_DERIVED_NS = uuid.UUID("6f1c3f55-6a47-4a8c-9d0e-2f5b8f0c4a11")


def now_utc() -> datetime:
    return datetime.now(UTC)


def new_event_id() -> str:
    return str(uuid.uuid4())


def derived_event_id(*parts: object) -> str:
    """A deterministic UUID from its parts (e.g. a source event id and a feature-set version)."""
    return str(uuid.uuid5(_DERIVED_NS, "|".join(str(p) for p in parts)))


def envelope(
    producer: str,
    *,
    cause: Mapping[str, Any] | Event | None = None,
    correlation_id: str | None = None,
    event_time: datetime | None = None,
    event_id: str | None = None,
) -> dict[str, Any]:
    """Envelope fields for a new event; ``cause`` is the event (or record) that caused it."""
    eid = event_id or new_event_id()
    cause_value = cause.value if isinstance(cause, Event) else cause
    causation_id = None
    if cause_value is not None:
        causation_id = str(cause_value["event_id"])
        correlation_id = correlation_id or str(cause_value["correlation_id"])
    now = now_utc()
    return {
        "event_id": eid,
        "event_time": event_time or now,
        "produced_at": now,
        "producer": producer,
        "correlation_id": correlation_id or eid,
        "causation_id": causation_id,
    }


def as_utc(value: datetime | int | float) -> datetime:
    """A timestamp as an aware UTC datetime (epoch millis accepted)."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.fromtimestamp(value / 1000.0, tz=UTC)


def epoch_ms(value: datetime) -> int:
    return int(as_utc(value).timestamp() * 1000)


@dataclass(frozen=True, slots=True)
class Event:
    """A decoded record as a consumer sees it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: dict[str, Any]
    raw: bytes
    schema_id: int
    timestamp_ms: int

    @property
    def event_id(self) -> str:
        return str(self.value["event_id"])

    @property
    def correlation_id(self) -> str:
        return str(self.value["correlation_id"])

    def __getitem__(self, name: str) -> Any:
        return self.value[name]
