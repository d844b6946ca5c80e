"""One raw event's feature vector, computed the same way on the stream and on a request.

The features service folds each event of ``events.raw`` into its entity's window state and emits
the vector; deployment answers ``POST /v1/predict`` for a raw event with the vector that event
would get, by reading the entity's state from the online store and folding the event into a
copy of it (the store is not changed: only the stream owns the state). Both call
:meth:`ProjectFeatures.compute`, so there is one code path and no training/serving skew.

The online store's ``entity_windows`` table (schema ``features``, migration 003) holds each
entity's window state as of the last batch the features service made durable, keyed by project
and entity; the SQL that writes and reads it is here, next to the computation that uses it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson

from driftline.events import as_utc, epoch_ms
from driftline.projects import Applied
from driftline.records import RawEvent
from driftline_ml.featuredefs import FeatureSet, FeatureValue, WindowedResult

_KEY_SEPARATOR = "\x1f"  # ASCII unit separator: in neither a project name nor an entity id in practice


@dataclass(frozen=True, slots=True)
class Vector:
    """One raw event's features (in the feature set's order) and what the windows said of it."""

    features: dict[str, FeatureValue]
    windowed: WindowedResult | None
    new_state: dict[str, Any] | None  # the entity's state after the event; None: unchanged (a duplicate)

    @property
    def late(self) -> bool:
        return bool(self.windowed and self.windowed.late)


@dataclass(frozen=True)
class ProjectFeatures:
    """One project's feature set, as its vectors carry it."""

    project: str | None  # None: the feature set given directly (a unit test's), not a project's
    event_type: str
    features: FeatureSet
    version: str  # the feature-set version its vectors carry (the projects topic's, e.g. "1+2")
    digest: str = ""

    def state_key(self, entity_id: str) -> str:
        """The entity's key in the window-state table: per project, so two projects' entities
        with the same id never share windows."""
        return entity_id if self.project is None else f"{self.project}{_KEY_SEPARATOR}{entity_id}"

    def compute(self, raw: RawEvent, state: Mapping[str, Any] | None) -> Vector:
        """The vector of ``raw`` given its entity's window state before it (pure: ``state`` is
        not modified; the new state is returned)."""
        fs = self.features
        row = fs.row(raw.payload)
        windowed = None
        new_state = None
        if fs.stateful:
            new_state, windowed = fs.apply(state, raw.event_id, epoch_ms(as_utc(raw.event_time)), row)
        return Vector(fs.vector(row, windowed), windowed, new_state)


class FeatureSets:
    """The feature set of every project on the projects topic, by event type; rebuilt when the
    topic changes (:meth:`update`), reusing a project's set while its definition is the same."""

    def __init__(self, *, keep_last: int = 32, max_entries: int = 10_000) -> None:
        self.keep_last = keep_last
        self.max_entries = max_entries
        self.by_type: dict[str, ProjectFeatures] = {}
        self.by_project: dict[str, ProjectFeatures] = {}

    @classmethod
    def single(cls, event_type: str, features: FeatureSet) -> FeatureSets:
        sets = cls()
        pf = ProjectFeatures(None, event_type, features, features.version)
        sets.by_type[pf.event_type] = pf
        return sets

    def update(self, projects: Iterable[Applied]) -> None:
        by_type: dict[str, ProjectFeatures] = {}
        by_project: dict[str, ProjectFeatures] = {}
        for applied in projects:
            known = self.by_project.get(applied.name)
            if known is not None and known.digest == applied.digest:
                pf = known
            else:
                features = FeatureSet(applied.project.features, keep_last=self.keep_last, max_entries=self.max_entries)
                pf = ProjectFeatures(
                    applied.name, applied.project.event.type, features, applied.feature_set_version, applied.digest
                )
            by_type[pf.event_type] = pf
            by_project[applied.name] = pf
        self.by_type, self.by_project = by_type, by_project

    def of(self, raw: RawEvent) -> ProjectFeatures | None:
        """The feature set of a raw event: its project's, else its event type's."""
        if raw.project is not None and raw.project in self.by_project:
            pf = self.by_project[raw.project]
            return pf if pf.event_type == raw.event_type else None
        return self.by_type.get(raw.event_type)

    def all(self) -> list[ProjectFeatures]:
        return list(self.by_type.values())


# ---------------------------------------------------------------------------------------------
# The online store's window states (table features.entity_windows)


@dataclass(frozen=True, slots=True)
class StateRow:
    """An entity's window state after the raw event at (partition, offset)."""

    key: str  # ProjectFeatures.state_key
    state: dict[str, Any]
    source_partition: int
    source_offset: int
    json: bytes | None = None  # ``state`` encoded already (orjson), when the writer has it

    def record(self) -> tuple[Any, ...]:
        # orjson writes a non-finite number as null, as jsonsafe does, at a fraction of the cost
        # (a state is its whole recent window, ~1-3 KB; jsonsafe walked it in Python)
        text = (self.json if self.json is not None else orjson.dumps(self.state)).decode()
        return (self.key, text, self.source_partition, self.source_offset)


STATE_COLUMNS = ("state_key", "state", "source_partition", "source_offset")

_STAGE_STATES = """
CREATE TEMPORARY TABLE IF NOT EXISTS window_state_stage (
    state_key text, state jsonb, source_partition integer, source_offset bigint
) ON COMMIT DELETE ROWS
"""

# The newest state per entity of the batch; never replaced by an older one (a worker that lost the
# partition and is still finishing a batch): an entity's events are on one partition, in offset order.
_UPSERT_STATES = """
INSERT INTO entity_windows (state_key, state, source_partition, source_offset)
SELECT DISTINCT ON (state_key) state_key, state, source_partition, source_offset
FROM window_state_stage
ORDER BY state_key, source_offset DESC
ON CONFLICT (state_key) DO UPDATE SET
    state = EXCLUDED.state,
    source_partition = EXCLUDED.source_partition,
    source_offset = EXCLUDED.source_offset,
    updated_at = now()
WHERE EXCLUDED.source_partition <> entity_windows.source_partition
   OR EXCLUDED.source_offset > entity_windows.source_offset
"""


async def write_states(conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy, rows: Sequence[StateRow]) -> None:
    """Upsert the states of a batch, inside the caller's transaction (COPY into a staging table)."""
    if not rows:
        return
    await conn.execute(_STAGE_STATES)
    await conn.copy_records_to_table("window_state_stage", records=[r.record() for r in rows], columns=STATE_COLUMNS)
    await conn.execute(_UPSERT_STATES)


async def read_states(pool: asyncpg.Pool, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The stored window state of each key that has one (one query for all of them)."""
    if not keys:
        return {}
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT state_key, state FROM entity_windows WHERE state_key = ANY($1::text[])", list(set(keys))
        )
    return {r["state_key"]: orjson.loads(r["state"]) for r in rows}
