"""The registry's SQL (schema ``registry``): models, versions, stage history, and the decision log
(what is on models.promoted / models.rejected)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, TypeAlias

import asyncpg

from driftline import jsonsafe
from driftline.db import row_with_json
from driftline.events import Event, as_utc, record_of
from driftline.outbox import record_to_json
from driftline.records import ModelPromoted, ModelRejected, ModelTrained

VERSION_COLUMNS = (
    "model_name, version, run_id, stage, trained_event_id, correlation_id, artifact_bucket, artifact_key, "
    "artifact_sha256, metadata_key, metadata_sha256, metrics, champion_metrics, evaluated_against, "
    "dataset_fingerprint, holdout_fingerprint, feature_set_version, feature_names, params, n_train, n_holdout, "
    "duration_s, trigger, drift_episode_id, training_request_id, trained_at, registered_at, comparison_metrics, "
    "n_comparison, training_set_key, training_set_sha256, training_set_size, labels_as_of, train_start, holdout_end, "
    "code_version"
)
# An asyncpg connection or the pool's proxy of one (the stubs type them apart).
Conn = Any

_VERSION_JSON = ("metrics", "champion_metrics", "feature_names", "params", "comparison_metrics")


Decided: TypeAlias = ModelPromoted | ModelRejected
"""A decision as it is on its topic (models.promoted, models.rejected)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RegisteredVersion:
    """What a promotion announces of the version it names (a row of ``versions``)."""

    model_name: str
    version: int
    run_id: str
    artifact_bucket: str
    artifact_key: str
    artifact_sha256: str
    metadata_key: str
    metadata_sha256: str
    feature_names: Sequence[str]
    metrics: Mapping[str, float]
    drift_episode_id: str | None

    @classmethod
    def of_row(cls, row: Mapping[str, Any]) -> RegisteredVersion:
        return cls(**{f.name: row[f.name] for f in fields(cls)})


@dataclass(frozen=True, slots=True)
class LoggedDecision:
    """A decision of the log not applied here yet."""

    event_id: str
    version: int
    event_time: datetime
    record: Decided


def logged_record(topic: str, stored: str) -> Decided:
    """A decision record as the log stores it (JSON, times in epoch millis: see record_to_json)."""
    value = json.loads(stored)
    value |= {k: as_utc(value[k]) for k in ("event_time", "produced_at")}
    record: Decided = record_of(topic, value)
    return record


def _version(row: asyncpg.Record) -> dict[str, Any]:
    return row_with_json(row, _VERSION_JSON)


def _json_or_null(value: object) -> str | None:
    return None if value is None else jsonsafe.dumps(value)


def _history(row: asyncpg.Record) -> dict[str, Any]:
    return row_with_json(row, ("details",))  # NOT NULL


class RegistryStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @asynccontextmanager
    async def locked_model(self, name: str, *, create: bool) -> AsyncIterator[tuple[Conn, Any]]:
        """A transaction holding the model's row lock (version numbers and stages change under it).

        Yields the connection and the model row (None when it does not exist and ``create`` is False).
        """
        async with self.pool.acquire() as conn, conn.transaction():
            if create:
                await conn.execute("INSERT INTO models (name) VALUES ($1) ON CONFLICT (name) DO NOTHING", name)
            row = await conn.fetchrow(
                "SELECT name, champion_version, challenger_version, canary_fraction FROM models "
                "WHERE name = $1 FOR UPDATE",
                name,
            )
            yield conn, row

    # -- writes (inside locked_model) ---------------------------------------------------------

    @staticmethod
    async def version_of_run(conn: Conn, run_id: str) -> int | None:
        value = await conn.fetchval("SELECT version FROM versions WHERE run_id = $1", run_id)
        return None if value is None else int(value)

    @staticmethod
    async def version(conn: Conn, name: str, version: int) -> dict[str, Any] | None:
        row = await conn.fetchrow(
            f"SELECT {VERSION_COLUMNS} FROM versions WHERE model_name = $1 AND version = $2",  # noqa: S608
            name,
            version,
        )
        return _version(row) if row else None

    @classmethod
    async def registered(cls, conn: Conn, name: str, version: int) -> RegisteredVersion | None:
        row = await cls.version(conn, name, version)
        return None if row is None else RegisteredVersion.of_row(row)

    @staticmethod
    async def next_version(conn: Conn, name: str, run_id: str) -> int:
        """The next version number, skipping numbers the decision log gives other runs."""
        latest = int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM versions WHERE model_name = $1", name))
        claimed = {
            int(r["version"])
            for r in await conn.fetch(
                "SELECT DISTINCT version FROM decisions WHERE model_name = $1 AND run_id <> $2 AND version > $3",
                name,
                run_id,
                latest,
            )
        }
        version = latest + 1
        while version in claimed:
            version += 1
        return version

    @staticmethod
    async def model_row(conn: Conn, name: str) -> Any:
        return await conn.fetchrow(
            "SELECT name, champion_version, challenger_version, canary_fraction FROM models WHERE name = $1", name
        )

    @staticmethod
    async def registered_versions(conn: Conn, name: str) -> set[int]:
        rows = await conn.fetch("SELECT version FROM versions WHERE model_name = $1", name)
        return {int(r["version"]) for r in rows}

    # -- the decision log (models.promoted / models.rejected read back) ------------------------

    @staticmethod
    async def log_decision(conn: Conn, event: Event[Decided], *, action: str, actor: str) -> bool:
        """Remember a decision seen on its topic; False when it was known. It counts as applied
        when its history row exists (the registry made it here, or applied it already)."""
        r = event.record
        status = await conn.execute(
            "INSERT INTO decisions (event_id, topic, model_name, version, run_id, action, actor, event_time, "
            "kafka_partition, kafka_offset, record, applied) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::jsonb, "
            "EXISTS (SELECT 1 FROM history WHERE event_id = $1)) ON CONFLICT (event_id) DO NOTHING",
            r.event_id,
            event.topic,
            r.model_name,
            r.version,
            r.run_id,
            action,
            actor,
            r.event_time,
            event.partition,
            event.offset,
            record_to_json(r.to_avro()),
        )
        return bool(status.endswith(" 1"))

    @staticmethod
    async def mark_published(conn: Conn, event_id: str) -> None:
        """The event is on its topic: the outbox relay need not send it (again)."""
        await conn.execute(
            "UPDATE outbox SET published_at = now() WHERE event_id = $1 AND published_at IS NULL", event_id
        )

    @staticmethod
    async def logged_version(conn: Conn, name: str, run_id: str) -> int | None:
        """The version number the decision log gives a run (a rebuild keeps the numbers)."""
        value = await conn.fetchval(
            "SELECT version FROM decisions WHERE model_name = $1 AND run_id = $2 ORDER BY event_time LIMIT 1",
            name,
            run_id,
        )
        return None if value is None else int(value)

    @staticmethod
    async def logged(conn: Conn, event_ids: list[str]) -> bool:
        return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM decisions WHERE event_id = ANY($1))", event_ids))

    @staticmethod
    async def pending_decisions(conn: Conn, name: str) -> list[LoggedDecision]:
        """Logged decisions not yet applied here, in the order the registry made them."""
        rows = await conn.fetch(
            "SELECT event_id, topic, version, event_time, record FROM decisions WHERE model_name = $1 AND NOT applied "
            "ORDER BY event_time, topic, kafka_partition, kafka_offset",
            name,
        )
        return [
            LoggedDecision(r["event_id"], int(r["version"]), r["event_time"], logged_record(r["topic"], r["record"]))
            for r in rows
        ]

    @staticmethod
    async def mark_applied(conn: Conn, event_id: str) -> None:
        await conn.execute("UPDATE decisions SET applied = true WHERE event_id = $1", event_id)

    @staticmethod
    async def insert_version(conn: Conn, e: ModelTrained, version: int) -> None:
        """Register run ``e`` as ``version``, a candidate until its decision is applied."""
        await conn.execute(
            "INSERT INTO versions (model_name, version, run_id, stage, trained_event_id, correlation_id, "
            "artifact_bucket, artifact_key, artifact_sha256, metadata_key, metadata_sha256, metrics, "
            "champion_metrics, comparison_metrics, n_comparison, evaluated_against, dataset_fingerprint, "
            "holdout_fingerprint, feature_set_version, feature_names, params, n_train, n_holdout, duration_s, "
            "trigger, drift_episode_id, training_request_id, trained_at, training_set_key, training_set_sha256, "
            "training_set_size, labels_as_of, train_start, holdout_end, code_version) "
            "VALUES ($1, $2, $3, 'candidate', $4, $5, $6, $7, $8, $9, $10, $11::jsonb, $12::jsonb, $13::jsonb, $14, "
            "$15, $16, $17, $18, $19::jsonb, $20::jsonb, $21, $22, $23, $24, $25, $26, $27, $28, $29, $30, $31, "
            "$32, $33, $34)",
            e.model_name,
            version,
            e.run_id,
            e.event_id,
            e.correlation_id,
            e.artifact_bucket,
            e.artifact_key,
            e.artifact_sha256,
            e.metadata_key,
            e.metadata_sha256,
            jsonsafe.dumps(e.metrics),
            _json_or_null(e.champion_metrics),
            _json_or_null(e.comparison_metrics),
            e.n_comparison,
            e.champion_version,
            e.dataset_fingerprint,
            e.holdout_fingerprint,
            e.feature_set_version,
            jsonsafe.dumps(e.feature_names),
            jsonsafe.dumps(e.params),
            e.n_train,
            e.n_holdout,
            e.duration_s,
            e.trigger,
            e.drift_episode_id,
            e.training_request_id,
            as_utc(e.event_time),
            e.training_set_key,
            e.training_set_sha256,
            e.training_set_size,
            None if e.labels_as_of is None else as_utc(e.labels_as_of),
            None if e.train_start is None else as_utc(e.train_start),
            None if e.holdout_end is None else as_utc(e.holdout_end),
            e.code_version,
        )

    @staticmethod
    async def set_stage(conn: Conn, name: str, version: int, stage: str) -> None:
        await conn.execute(
            "UPDATE versions SET stage = $3 WHERE model_name = $1 AND version = $2", name, version, stage
        )

    @staticmethod
    async def set_roles(
        conn: Conn, name: str, *, champion: int | None, challenger: int | None, canary_fraction: float | None = None
    ) -> None:
        """The model's champion and challenger; ``canary_fraction``: the challenger is a canary serving it."""
        await conn.execute(
            "UPDATE models SET champion_version = $2, challenger_version = $3, canary_fraction = $4, "
            "updated_at = now() WHERE name = $1",
            name,
            champion,
            challenger,
            None if challenger is None else canary_fraction,
        )

    @staticmethod
    async def add_history(
        conn: Conn,
        *,
        event_id: str,
        model_name: str,
        version: int | None,
        action: str,
        actor: str,
        reason: str,
        previous_version: int | None = None,
        details: dict[str, Any] | None = None,
        correlation_id: str | None = None,
        at: datetime | None = None,
    ) -> bool:
        status = await conn.execute(
            "INSERT INTO history (event_id, model_name, version, action, previous_version, actor, reason, details, "
            "correlation_id, at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9, coalesce($10, now())) "
            "ON CONFLICT (event_id) DO NOTHING",
            event_id,
            model_name,
            version,
            action,
            previous_version,
            actor,
            reason,
            jsonsafe.dumps(details or {}, default=str),
            correlation_id,
            at,
        )
        return bool(status.endswith(" 1"))

    @staticmethod
    async def champion_sequence(conn: Conn, name: str) -> list[int]:
        """Versions that became champion, oldest first."""
        rows = await conn.fetch(
            "SELECT version FROM history WHERE model_name = $1 AND action IN ('promote', 'rollback') ORDER BY id",
            name,
        )
        return [int(r["version"]) for r in rows]

    @staticmethod
    async def versions_in_stage(conn: Conn, name: str, stage: str) -> set[int]:
        rows = await conn.fetch("SELECT version FROM versions WHERE model_name = $1 AND stage = $2", name, stage)
        return {int(r["version"]) for r in rows}

    # -- reads ----------------------------------------------------------------------------------

    async def list_models(self) -> list[dict[str, Any]]:
        rows = await self.pool.fetch(
            "SELECT m.name, m.champion_version, m.challenger_version, m.canary_fraction, m.created_at, m.updated_at, "
            "count(v.version) AS versions, max(v.version) AS latest_version "
            "FROM models m LEFT JOIN versions v ON v.model_name = m.name GROUP BY m.name ORDER BY m.name"
        )
        return [dict(r) for r in rows]

    async def get_model(self, name: str) -> dict[str, Any] | None:
        row = await self.pool.fetchrow(
            "SELECT name, champion_version, challenger_version, canary_fraction, created_at, updated_at FROM models "
            "WHERE name = $1",
            name,
        )
        return dict(row) if row else None

    async def list_versions(self, name: str, stage: str | None = None) -> list[dict[str, Any]]:
        rows = await self.pool.fetch(
            f"SELECT {VERSION_COLUMNS} FROM versions WHERE model_name = $1 "  # noqa: S608
            "AND ($2::text IS NULL OR stage = $2) ORDER BY version",
            name,
            stage,
        )
        return [_version(r) for r in rows]

    async def get_version(self, name: str, version: int) -> dict[str, Any] | None:
        async with self.pool.acquire() as conn:
            return await self.version(conn, name, version)

    async def history(self, name: str, *, version: int | None = None, limit: int | None = 500) -> list[dict[str, Any]]:
        """Most recent first; ``limit`` None: all of it."""
        rows = await self.pool.fetch(
            "SELECT id, event_id, model_name, version, action, previous_version, actor, reason, details, "
            "correlation_id, at FROM history WHERE model_name = $1 AND ($2::int IS NULL OR version = $2) "
            "ORDER BY at DESC, id DESC LIMIT $3",
            name,
            version,
            limit,
        )
        return [_history(r) for r in rows]
