"""Monitoring's SQL (schema ``monitoring``): window summaries and drift reports (episodes)."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

import asyncpg

from driftline import jsonsafe
from driftline.events import as_utc, epoch_ms
from driftline.records import DriftDetected

if TYPE_CHECKING:
    from driftline_monitoring.drift import WindowSummary


def _json(doc: Any) -> str:
    return jsonsafe.dumps(doc, default=str)


def record_json(record: DriftDetected) -> str:
    """A record as stored in ``drift_reports.record``: its Avro form, timestamps as epoch millis."""
    return jsonsafe.dumps(record.to_avro(), default=lambda x: epoch_ms(x) if isinstance(x, datetime) else str(x))


def record_from_json(doc: dict[str, Any]) -> DriftDetected:
    """The record of :func:`record_json` (timestamps back to datetimes)."""
    r = DriftDetected.from_avro(doc)
    return replace(
        r,
        event_time=as_utc(r.event_time),
        produced_at=as_utc(r.produced_at),
        window_start=as_utc(r.window_start),
        window_end=as_utc(r.window_end),
        onset=None if r.onset is None else as_utc(r.onset),
    )


def _row(record: asyncpg.Record) -> dict[str, Any]:
    out = dict(record)
    for key in ("features", "score", "performance", "evidence", "record", "attempts"):
        if isinstance(out.get(key), str):
            out[key] = json.loads(out[key])
    for key, value in out.items():
        if isinstance(value, datetime):
            out[key] = value.isoformat()
    return out


@dataclass(frozen=True)
class OpenReport:
    """The open episode of a model, as stored, with its further attempts."""

    episode_id: str
    model_version: int
    kind: str
    onset: datetime | None = None
    attempts: int = 1  # the opening detection and every stored further attempt
    consolidated_to: int = 0  # the largest consolidation target asked for (its labelled_since_onset)


class MonitoringStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def save_summary(self, summary: WindowSummary) -> None:
        """Idempotent: the check id derives from the window, so a replayed check is not doubled."""
        await self.pool.execute(
            """
            INSERT INTO window_summaries (check_id, model_name, model_version, window_start, window_end,
                window_size, records_seen, drifted, kind, features, score, performance)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::jsonb, $11::jsonb, $12::jsonb)
            ON CONFLICT (check_id) DO NOTHING
            """,
            summary.check_id,
            summary.model_name,
            summary.model_version,
            summary.window_start,
            summary.window_end,
            summary.window_size,
            summary.records_seen,
            summary.drifted,
            summary.kind,
            _json(summary.features),
            _json(summary.score) if summary.score is not None else None,
            _json(summary.performance),
        )

    async def open_episode(self, record: DriftDetected) -> bool:
        """Record a new episode; False when the model already has an open one (kept as it is)."""
        row = await self.pool.fetchrow(
            """
            INSERT INTO drift_reports (episode_id, event_id, model_name, model_version, kind, method, statistic,
                threshold, features, window_start, window_end, window_size, evidence, record)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13::jsonb, $14::jsonb)
            ON CONFLICT (model_name) WHERE resolved_at IS NULL DO NOTHING
            RETURNING episode_id
            """,
            record.episode_id,
            record.event_id,
            record.model_name,
            record.model_version,
            record.kind,
            record.method,
            record.statistic,
            record.threshold,
            list(record.features),
            record.window_start,
            record.window_end,
            record.window_size,
            _json([e.to_avro() for e in record.evidence]),
            record_json(record),
        )
        return row is not None

    async def open_episode_of(self, model_name: str) -> OpenReport | None:
        row = await self.pool.fetchrow(
            """
            SELECT r.episode_id, r.model_version, r.kind, r.record,
                   coalesce(max(a.attempt), 1) AS attempts,
                   coalesce(max(a.labelled_since_onset) FILTER (WHERE a.reason = 'consolidation'), 0)
                       AS consolidated_to
            FROM drift_reports r LEFT JOIN episode_attempts a USING (episode_id)
            WHERE r.model_name = $1 AND r.resolved_at IS NULL
            GROUP BY r.episode_id
            """,
            model_name,
        )
        if row is None:
            return None
        onset = _row(row)["record"].get("onset")
        return OpenReport(
            row["episode_id"],
            row["model_version"],
            row["kind"],
            onset=None if onset is None else as_utc(onset),
            attempts=row["attempts"],
            consolidated_to=row["consolidated_to"],
        )

    async def save_attempt(self, record: DriftDetected) -> None:
        """A further attempt of an open episode (idempotent: one row per episode and attempt)."""
        await self.pool.execute(
            """
            INSERT INTO episode_attempts (episode_id, attempt, event_id, reason, model_version,
                labelled_since_onset, record)
            VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb)
            ON CONFLICT (episode_id, attempt) DO NOTHING
            """,
            record.episode_id,
            record.attempt,
            record.event_id,
            record.reason,
            record.model_version,
            record.labelled_since_onset or 0,
            record_json(record),
        )

    async def unpublished(self) -> list[DriftDetected]:
        """Episodes and attempts stored but not marked published, oldest first."""
        rows = await self.pool.fetch(
            """
            SELECT record, detected_at AS at FROM drift_reports WHERE published_at IS NULL
            UNION ALL
            SELECT record, created_at AS at FROM episode_attempts WHERE published_at IS NULL
            ORDER BY at
            """
        )
        return [record_from_json(_row(r)["record"]) for r in rows]

    async def mark_published(self, episode_id: str, attempt: int = 1) -> None:
        if attempt == 1:
            await self.pool.execute("UPDATE drift_reports SET published_at = now() WHERE episode_id = $1", episode_id)
        else:
            await self.pool.execute(
                "UPDATE episode_attempts SET published_at = now() WHERE episode_id = $1 AND attempt = $2",
                episode_id,
                attempt,
            )

    async def touch(self, episode_id: str, seen_at: datetime) -> None:
        """The episode was detected again at ``seen_at`` (written in batches, see Episodes.touch)."""
        await self.pool.execute(
            "UPDATE drift_reports SET last_seen_at = GREATEST(last_seen_at, $2) WHERE episode_id = $1",
            episode_id,
            seen_at,
        )

    async def resolve(self, episode_id: str, resolution: str) -> None:
        await self.pool.execute(
            "UPDATE drift_reports SET resolved_at = now(), resolution = $2"
            " WHERE episode_id = $1 AND resolved_at IS NULL",
            episode_id,
            resolution,
        )

    async def reports(
        self, *, model_name: str | None = None, open_only: bool = False, limit: int = 50
    ) -> list[dict[str, Any]]:
        rows = await self.pool.fetch(
            """
            SELECT episode_id, event_id, model_name, model_version, kind, method, statistic, threshold, features,
                window_start, window_end, window_size, evidence, detected_at, published_at, last_seen_at,
                resolved_at, resolution,
                (SELECT coalesce(jsonb_agg(jsonb_build_object(
                            'attempt', a.attempt, 'reason', a.reason, 'model_version', a.model_version,
                            'labelled_since_onset', a.labelled_since_onset, 'event_id', a.event_id,
                            'created_at', a.created_at, 'published_at', a.published_at) ORDER BY a.attempt), '[]')
                 FROM episode_attempts a WHERE a.episode_id = r.episode_id) AS attempts
            FROM drift_reports r
            WHERE ($1::text IS NULL OR model_name = $1) AND (NOT $2 OR resolved_at IS NULL)
            ORDER BY detected_at DESC LIMIT $3
            """,
            model_name,
            open_only,
            limit,
        )
        return [_row(r) for r in rows]

    async def summaries(self, model_name: str, *, limit: int = 100) -> list[dict[str, Any]]:
        """The latest window summaries of a model, oldest first."""
        rows = await self.pool.fetch(
            """
            SELECT * FROM (
                SELECT * FROM window_summaries WHERE model_name = $1 ORDER BY computed_at DESC LIMIT $2
            ) latest ORDER BY computed_at
            """,
            model_name,
            limit,
        )
        return [_row(r) for r in rows]

    async def latest_summaries(self) -> list[dict[str, Any]]:
        rows = await self.pool.fetch(
            "SELECT DISTINCT ON (model_name) * FROM window_summaries ORDER BY model_name, computed_at DESC"
        )
        return [_row(r) for r in rows]

    async def models(self) -> list[str]:
        rows = await self.pool.fetch(
            "SELECT model_name FROM window_summaries UNION SELECT model_name FROM drift_reports ORDER BY 1"
        )
        return [r["model_name"] for r in rows]
