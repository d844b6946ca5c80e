"""The online store's SQL (schema ``features``): batched, idempotent writes and the latest-vector read.
(The entity window states, which deployment reads too, are written by :mod:`driftline_ml.online`.)

A batch is written by one statement in one round trip: its rows travel as one array per column
(asyncpg's binary array encoding, like COPY's), are unnested once, inserted into ``vectors``
keyed by the vector's event_id (a replay changes nothing) and upserted into ``latest`` only where
the vector is newer than the stored one by (event_time, source_offset), so an out-of-order vector
never overwrites a newer one. One statement is one transaction: all of the batch or none of it.
(It replaced a COPY into a temporary staging table followed by two statements: five round trips
and a transaction per batch; see services/features/README.md, "Benchmark".)
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from driftline.logging import get_logger
from driftline.records import FeatureVectorComputed
from driftline_ml.online import StateRow, write_states

log = get_logger(__name__)

COLUMNS = (
    "event_id",
    "source_event_id",
    "entity_id",
    "feature_set_version",
    "event_time",
    "features",
    "late",
    "correlation_id",
    "source_partition",
    "source_offset",
    "project",
)
_COLS = ", ".join(COLUMNS)

_TYPES = (
    "text",
    "text",
    "text",
    "text",
    "timestamptz",
    "jsonb",
    "boolean",
    "text",
    "integer",
    "bigint",
    "text",
)
_UNNEST = ", ".join(f"${i}::{t}[]" for i, t in enumerate(_TYPES, start=1))

_WRITE = f"""
WITH stage AS MATERIALIZED (
    SELECT * FROM unnest({_UNNEST}) AS s({_COLS})
), stored AS (
    INSERT INTO vectors ({_COLS})
    SELECT {_COLS} FROM stage
    ON CONFLICT (event_id) DO NOTHING
)
INSERT INTO latest ({_COLS})
SELECT DISTINCT ON (project, feature_set_version, entity_id) {_COLS}
FROM stage
ORDER BY project, feature_set_version, entity_id, event_time DESC, source_offset DESC
ON CONFLICT (project, feature_set_version, entity_id) DO UPDATE SET
    event_id = EXCLUDED.event_id,
    source_event_id = EXCLUDED.source_event_id,
    event_time = EXCLUDED.event_time,
    features = EXCLUDED.features,
    late = EXCLUDED.late,
    correlation_id = EXCLUDED.correlation_id,
    source_partition = EXCLUDED.source_partition,
    source_offset = EXCLUDED.source_offset,
    updated_at = now()
WHERE latest.event_id <> EXCLUDED.event_id
  AND (EXCLUDED.event_time, EXCLUDED.source_offset) > (latest.event_time, latest.source_offset)
"""  # noqa: S608 - constant column list


@dataclass(frozen=True, slots=True)
class VectorRow:
    event_id: str
    source_event_id: str
    entity_id: str
    feature_set_version: str
    event_time: datetime
    features: dict[str, Any]
    late: bool
    correlation_id: str
    source_partition: int
    source_offset: int
    project: str = ""  # '' for a vector of no project (written before projects were data)

    @classmethod
    def of(cls, vector: FeatureVectorComputed, *, source_partition: int, source_offset: int) -> VectorRow:
        """The row that stores ``vector`` (its fields of the same name), computed from the raw event
        at that partition and offset."""
        return cls(
            event_id=vector.event_id,
            source_event_id=vector.source_event_id,
            entity_id=vector.entity_id,
            feature_set_version=vector.feature_set_version,
            event_time=vector.event_time,
            features=vector.features,
            late=vector.late,
            correlation_id=vector.correlation_id,
            source_partition=source_partition,
            source_offset=source_offset,
            project=vector.project or "",
        )

    def record(self) -> tuple[Any, ...]:
        """The row's values in ``COLUMNS`` order (features as JSON text, non-finite numbers as null)."""
        return (
            self.event_id,
            self.source_event_id,
            self.entity_id,
            self.feature_set_version,
            self.event_time,
            orjson.dumps(self.features).decode(),
            self.late,
            self.correlation_id,
            self.source_partition,
            self.source_offset,
            self.project,
        )


class OnlineStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def write(self, rows: list[VectorRow], states: Sequence[StateRow] = ()) -> None:
        """Write a batch in one transaction (idempotent: safe to repeat after a crash): its vectors
        and the window states of its entities (which ``POST /v1/predict`` of deployment reads)."""
        if not rows and not states:
            return
        async with self.pool.acquire() as conn, conn.transaction():
            if rows:
                await conn.execute(_WRITE, *zip(*(r.record() for r in rows), strict=True))
            await write_states(conn, states)

    async def find(self, event_ids: list[str]) -> dict[str, tuple[dict[str, Any], bool]]:
        """Stored vectors by event id: (features, late)."""
        if not event_ids:
            return {}
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT event_id, features, late FROM vectors WHERE event_id = ANY($1::text[])", event_ids
            )
        return {r["event_id"]: (json.loads(r["features"]), r["late"]) for r in rows}

    async def latest(self, entity_id: str, feature_set_version: str, project: str = "") -> dict[str, Any] | None:
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(
                f"SELECT {_COLS}, updated_at FROM latest"  # noqa: S608 - constant column list
                " WHERE project = $1 AND feature_set_version = $2 AND entity_id = $3",
                project,
                feature_set_version,
                entity_id,
            )
        if row is None:
            return None
        out = dict(row)
        out["features"] = json.loads(out["features"])
        return out

    async def prune(self, older_than_days: float) -> int:
        """Delete computed vectors written more than ``older_than_days`` ago (``latest`` is kept)."""
        async with self.pool.acquire() as conn:
            status = await conn.execute(
                "DELETE FROM vectors WHERE written_at < now() - make_interval(secs => $1)", older_than_days * 86400.0
            )
        return int(status.split()[-1])


PRUNE_EVERY_S = 600.0


async def prune_history(store: OnlineStore, older_than_days: float, every_s: float = PRUNE_EVERY_S) -> None:
    """Delete old rows of the computed-vector history, every ``every_s`` (a failure is retried then)."""
    while True:
        try:
            deleted = await store.prune(older_than_days)
            if deleted:
                log.info("vectors_pruned", deleted=deleted, older_than_days=older_than_days)
        except Exception as exc:
            log.warning("vectors_prune_failed", error=repr(exc)[:300])
        await asyncio.sleep(every_s)
