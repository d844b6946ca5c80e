"""The training service's SQL (schema ``training``): examples, triggers, runs, champions, outbox.

The store loads and saves; it does not decide. What must happen atomically (a trigger decided
under its model's lock, a run's outcome stored with the event that announces it) happens in one
:meth:`TrainingStore.transaction`, whose caller decides between the reads and the writes.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import asyncpg

from driftline import jsonsafe, outbox
from driftline.db import row_with_json
from driftline.records import (
    FeatureVectorComputed,
    LabelRecorded,
    ModelTrained,
    Record,
    TrainingFailed,
    TrainingRequested,
)
from driftline_training.champion import Champion
from driftline_training.pipeline import Example
from driftline_training.requests import trigger_of
from driftline_training.trigger_policy import Trigger

RUN_COLUMNS = (
    "run_id, request_id, request_event_id, model_name, status, reason, requested_by, trigger, drift_episode_id, "
    "correlation_id, parameters, started_at, finished_at, duration_s, metrics, champion_version, champion_metrics, "
    "n_train, n_holdout, dataset_fingerprint, holdout_fingerprint, artifact_key, artifact_sha256, metadata_key, "
    "metadata_sha256, error_type, error_reason, result_event_id, attempts, comparison_metrics, n_comparison"
)
_JSON_COLUMNS = ("parameters", "metrics", "champion_metrics", "comparison_metrics")
_TRIGGER_COLUMNS = (
    "trigger_id, kind, model_name, event_time, source_event_id, episode_id, correlation_id, since, decision, "
    "reason, request_id, attempts, waiting, episode_attempt"
)


@dataclass(frozen=True, slots=True)
class CountedGap:
    """How a count cooldown measures the gap between two event times ``a <= b``: training's feature
    vectors of ``feature_set_version`` with ``a < event_time <= b`` (unit ``events``), or the
    labelled ones among them (``labels``: a label of ``classes``), counted up to ``up_to`` (the
    cooldown: a decision needs no more)."""

    unit: str  # events | labels
    up_to: int
    feature_set_version: str
    classes: tuple[str, ...]
    project: str = ""


def _counted_examples(counted: CountedGap, first: int) -> tuple[str, list[Any]]:
    """``FROM … WHERE …`` of the examples ``counted`` counts, its parameters numbered from ``$first``."""
    if counted.unit == "events":
        return (
            f"FROM vectors v WHERE v.project = ${first} AND v.feature_set_version = ${first + 1}",
            [counted.project, counted.feature_set_version],
        )
    return (
        f"FROM vectors v JOIN labels l ON l.labelled_event_id = v.source_event_id "
        f"WHERE v.project = ${first} AND v.feature_set_version = ${first + 1} AND l.label = ANY(${first + 2}::text[])",
        [counted.project, counted.feature_set_version, list(counted.classes)],
    )


# Requested triggers of a model and kind ($1, $2) whose run has not failed for good: a trigger
# counts while its run is pending, running or succeeded, and while it waits to be asked again.
_LIVE_REQUESTS = (
    "SELECT t.event_time FROM triggers t WHERE t.model_name = $1 AND t.kind = $2 "
    "AND t.decision = 'requested' AND (t.waiting OR NOT EXISTS "
    "(SELECT 1 FROM runs r WHERE r.request_id = t.request_id AND r.status = 'failed'))"
)


def run_to_dict(row: asyncpg.Record) -> dict[str, Any]:
    return row_with_json(row, _JSON_COLUMNS)


def _trigger(row: asyncpg.Record) -> Trigger:
    return Trigger(**dict(row))


def _json_features(features: Mapping[str, Any]) -> str:
    """NaN/inf are not JSON: stored as missing."""
    return jsonsafe.dumps(features)


class TrainingStore:
    def __init__(self, pool: asyncpg.Pool, default_project: str = "") -> None:
        """``default_project``: the project of a vector record that names none (the configured one)."""
        self.pool = pool
        self.default_project = default_project

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[TrainingTransaction]:
        """One PostgreSQL transaction: reads and writes that must happen together."""
        async with self.pool.acquire() as conn, conn.transaction():
            # The pool's proxy forwards to its connection (driftline.outbox.stage is typed for the latter).
            yield TrainingTransaction(cast("asyncpg.Connection[asyncpg.Record]", conn))

    # -- examples ---------------------------------------------------------------------------

    async def save_examples(self, vectors: Sequence[FeatureVectorComputed], labels: Sequence[LabelRecorded]) -> None:
        """Upsert vectors and labels in one transaction (a replay rewrites the same rows)."""
        async with self.pool.acquire() as conn, conn.transaction():
            if vectors:
                await conn.executemany(
                    "INSERT INTO vectors (source_event_id, feature_set_version, vector_event_id, entity_id, "
                    "event_time, features, project) VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7) "
                    "ON CONFLICT (source_event_id, feature_set_version) DO UPDATE SET "
                    "vector_event_id = EXCLUDED.vector_event_id, entity_id = EXCLUDED.entity_id, "
                    "event_time = EXCLUDED.event_time, features = EXCLUDED.features, project = EXCLUDED.project",
                    [
                        (
                            v.source_event_id,
                            v.feature_set_version,
                            v.event_id,
                            v.entity_id,
                            v.event_time,
                            _json_features(v.features),
                            v.project or self.default_project,
                        )
                        for v in vectors
                    ],
                )
            if labels:
                # A later label for the same event corrects the earlier one; an older one never wins.
                await conn.executemany(
                    "INSERT INTO labels (labelled_event_id, label, label_event_id, entity_id, event_time) "
                    "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (labelled_event_id) DO UPDATE SET "
                    "label = EXCLUDED.label, label_event_id = EXCLUDED.label_event_id, "
                    "entity_id = EXCLUDED.entity_id, event_time = EXCLUDED.event_time "
                    "WHERE labels.event_time <= EXCLUDED.event_time",
                    [(lb.labelled_event_id, str(lb.label), lb.event_id, lb.entity_id, lb.event_time) for lb in labels],
                )
                # Every record is kept, corrections too; a replay finds its record and keeps its time.
                await conn.executemany(
                    "INSERT INTO label_events (label_event_id, labelled_event_id, label, entity_id, event_time) "
                    "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (label_event_id) DO NOTHING",
                    [(lb.event_id, lb.labelled_event_id, str(lb.label), lb.entity_id, lb.event_time) for lb in labels],
                )

    async def example_counts(
        self, feature_set_version: str, classes: Sequence[str], project: str | None = None
    ) -> dict[str, int]:
        """Vectors and labelled examples of a project's feature set (``project`` None: the default
        project's), every labelled event (``labels``) and every label record, corrections included
        (``label_records``)."""
        row = await self.pool.fetchrow(
            "SELECT (SELECT count(*) FROM vectors WHERE project = $3 AND feature_set_version = $1) AS vectors, "
            "(SELECT count(*) FROM labels) AS labels, (SELECT count(*) FROM label_events) AS label_records, "
            "(SELECT count(*) FROM vectors v JOIN labels l ON l.labelled_event_id = v.source_event_id "
            " WHERE v.project = $3 AND v.feature_set_version = $1 AND l.label = ANY($2::text[])) AS labelled",
            feature_set_version,
            list(classes),
            self.default_project if project is None else project,
        )
        assert row is not None
        return {k: int(row[k]) for k in ("vectors", "labels", "label_records", "labelled")}

    async def clock(self) -> datetime:
        """The database's clock (label records are timed by it)."""
        value: datetime = await self.pool.fetchval("SELECT clock_timestamp()")
        return value

    async def select_examples(
        self,
        feature_set_version: str,
        classes: Sequence[str],
        *,
        since: datetime | None,
        limit: int,
        project: str | None = None,
        labels_as_of: datetime | None = None,
    ) -> list[Example]:
        """The most recent ``limit`` labelled examples of a project's feature set (at or after
        ``since`` when given), each with its latest label recorded at or before ``labels_as_of``
        (None: every label held)."""
        rows = await self.pool.fetch(
            "SELECT v.source_event_id, v.event_time, v.features, l.label, l.label_event_id, "
            "l.event_time AS label_time FROM vectors v "
            "JOIN LATERAL (SELECT le.label, le.label_event_id, le.event_time FROM label_events le "
            "  WHERE le.labelled_event_id = v.source_event_id "
            "  AND ($6::timestamptz IS NULL OR le.recorded_at <= $6) "
            "  ORDER BY le.event_time DESC, le.label_event_id DESC LIMIT 1) l ON TRUE "
            "WHERE v.project = $5 AND v.feature_set_version = $1 AND l.label = ANY($2::text[]) "
            "AND ($3::timestamptz IS NULL OR v.event_time >= $3) "
            "ORDER BY v.event_time DESC, v.source_event_id DESC LIMIT $4",
            feature_set_version,
            list(classes),
            since,
            limit,
            self.default_project if project is None else project,
            labels_as_of,
        )
        return [
            Example(
                r["source_event_id"],
                r["event_time"],
                json.loads(r["features"]),
                r["label"],
                label_event_id=r["label_event_id"],
                label_time=r["label_time"],
            )
            for r in rows
        ]

    async def count_labelled(
        self, feature_set_version: str, classes: Sequence[str], since: datetime | None, project: str | None = None
    ) -> int:
        return int(
            await self.pool.fetchval(
                "SELECT count(*) FROM vectors v JOIN labels l ON l.labelled_event_id = v.source_event_id "
                "WHERE v.project = $4 AND v.feature_set_version = $1 AND l.label = ANY($2::text[]) "
                "AND ($3::timestamptz IS NULL OR v.event_time >= $3)",
                feature_set_version,
                list(classes),
                since,
                self.default_project if project is None else project,
            )
        )

    # -- automatic triggers (drift episodes, the first model) ------------------------------

    async def waiting_triggers(self) -> list[Trigger]:
        """Drift triggers whose request waits for labelled examples."""
        rows = await self.pool.fetch(
            f"SELECT {_TRIGGER_COLUMNS} FROM triggers WHERE waiting ORDER BY decided_at"  # noqa: S608
        )
        return [_trigger(r) for r in rows]

    async def trigger_exists(self, trigger_id: str) -> bool:
        return bool(
            await self.pool.fetchval("SELECT EXISTS (SELECT 1 FROM triggers WHERE trigger_id = $1)", trigger_id)
        )

    async def list_triggers(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = await self.pool.fetch(
            "SELECT trigger_id, kind, model_name, source_event_id, episode_id, event_time, decision, reason, "
            "request_id, correlation_id, since, attempts, waiting, decided_at "
            "FROM triggers ORDER BY decided_at DESC LIMIT $1",
            limit,
        )
        return [dict(r) for r in rows]

    # -- runs --------------------------------------------------------------------------------

    async def get_run(self, run_id: str) -> dict[str, Any] | None:
        row = await self.pool.fetchrow(f"SELECT {RUN_COLUMNS} FROM runs WHERE run_id = $1", run_id)  # noqa: S608
        return run_to_dict(row) if row else None

    async def list_runs(
        self, *, model_name: str | None = None, status: str | None = None, limit: int = 50
    ) -> list[dict[str, Any]]:
        rows = await self.pool.fetch(
            f"SELECT {RUN_COLUMNS} FROM runs WHERE ($1::text IS NULL OR model_name = $1) "  # noqa: S608
            "AND ($2::text IS NULL OR status = $2) ORDER BY started_at DESC LIMIT $3",
            model_name,
            status,
            limit,
        )
        return [run_to_dict(r) for r in rows]

    async def start_run(self, run_id: str, request: TrainingRequested) -> int:
        """Record an attempt of a run as running (again, after a crash or an outage); returns its number.

        A second attempt may start while an earlier one still runs elsewhere (a redelivery after a
        rebalance): that is safe, since artifacts are stored under content-addressed keys and only
        the first attempt to finish announces its outcome (:meth:`TrainingTransaction.finish_run`).
        """
        attempts = await self.pool.fetchval(
            "INSERT INTO runs (run_id, request_id, request_event_id, model_name, status, reason, requested_by, "
            "trigger, drift_episode_id, correlation_id, parameters, attempts) "
            "VALUES ($1, $2, $3, $4, 'running', $5, $6, $7, $8, $9, $10::jsonb, 1) "
            "ON CONFLICT (run_id) DO UPDATE SET started_at = now(), attempts = runs.attempts + 1 "
            "WHERE runs.status = 'running' RETURNING attempts",
            run_id,
            request.request_id,
            request.event_id,
            request.model_name,
            request.reason,
            request.requested_by,
            trigger_of(request),
            request.drift_episode_id,
            request.correlation_id,
            jsonsafe.dumps(request.parameters),
        )
        return int(attempts or 0)

    # -- champions ---------------------------------------------------------------------------

    async def set_champion(self, champion: Champion, *, promoted_event_id: str, action: str) -> None:
        await self.pool.execute(
            "INSERT INTO champions (model_name, version, run_id, artifact_bucket, artifact_key, artifact_sha256, "
            "feature_names, promoted_event_id, action, metadata_key, metadata_sha256) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8, $9, $10, $11) "
            "ON CONFLICT (model_name) DO UPDATE SET version = EXCLUDED.version, run_id = EXCLUDED.run_id, "
            "artifact_bucket = EXCLUDED.artifact_bucket, artifact_key = EXCLUDED.artifact_key, "
            "artifact_sha256 = EXCLUDED.artifact_sha256, feature_names = EXCLUDED.feature_names, "
            "promoted_event_id = EXCLUDED.promoted_event_id, action = EXCLUDED.action, "
            "metadata_key = EXCLUDED.metadata_key, metadata_sha256 = EXCLUDED.metadata_sha256, updated_at = now()",
            champion.model_name,
            champion.version,
            champion.run_id,
            champion.artifact_bucket,
            champion.artifact_key,
            champion.artifact_sha256,
            jsonsafe.dumps(list(champion.feature_names)),
            promoted_event_id,
            action,
            champion.metadata_key,
            champion.metadata_sha256,
        )

    async def get_champion(self, model_name: str) -> Champion | None:
        row = await self.pool.fetchrow(
            "SELECT model_name, version, run_id, artifact_bucket, artifact_key, artifact_sha256, feature_names, "
            "metadata_key, metadata_sha256 FROM champions WHERE model_name = $1",
            model_name,
        )
        if row is None:
            return None
        return Champion(**{**dict(row), "feature_names": tuple(json.loads(row["feature_names"]))})

    async def list_champions(self) -> list[dict[str, Any]]:
        rows = await self.pool.fetch(
            "SELECT model_name, version, run_id, artifact_key, artifact_sha256, action, promoted_event_id, updated_at "
            "FROM champions ORDER BY model_name"
        )
        return [dict(r) for r in rows]


class TrainingTransaction:
    """The reads and writes of one transaction (see :meth:`TrainingStore.transaction`)."""

    def __init__(self, conn: asyncpg.Connection[asyncpg.Record]) -> None:
        self.conn = conn

    async def stage(self, topic: str, record: Record) -> None:
        """Stage an event in the outbox: published once the transaction committed."""
        await outbox.stage(self.conn, topic, record.to_avro())

    # -- triggers ----------------------------------------------------------------------------

    async def lock_model_triggers(self, model_name: str) -> None:
        """Serialise the trigger decisions of one model until the transaction ends."""
        await self.conn.execute("SELECT pg_advisory_xact_lock(hashtext('training-trigger:' || $1))", model_name)

    async def trigger(self, trigger_id: str) -> Trigger | None:
        row = await self.conn.fetchrow(
            f"SELECT {_TRIGGER_COLUMNS} FROM triggers WHERE trigger_id = $1",  # noqa: S608
            trigger_id,
        )
        return _trigger(row) if row is not None else None

    async def nearest_live_request(self, model_name: str, kind: str, event_time: datetime) -> datetime | None:
        """Event time of the requested trigger nearest to ``event_time`` whose run has not failed for good.

        A trigger counts while its run is pending, running or succeeded, and while it waits to be
        asked again (labels lag); a run that failed does not use up the cooldown of other drifts.
        For a duration cooldown; a count one uses :meth:`nearest_live_request_counted`.
        """
        value: datetime | None = await self.conn.fetchval(
            f"{_LIVE_REQUESTS} ORDER BY abs(extract(epoch FROM (t.event_time - $3::timestamptz))) LIMIT 1",
            model_name,
            kind,
            event_time,
        )
        return value

    async def nearest_live_request_counted(
        self, model_name: str, kind: str, event_time: datetime, counted: CountedGap
    ) -> tuple[datetime, int] | None:
        """The live requested trigger (as :meth:`nearest_live_request`) with the fewest examples
        ``counted`` counts between its event time and ``event_time``: its event time and that count.

        The count only grows with the distance, so the nearest one is the nearest live request
        before (or at) ``event_time`` or the nearest after it, whichever has fewer in between.
        """
        examples, args = _counted_examples(counted, 5)
        row = await self.conn.fetchrow(
            f"WITH live AS ({_LIVE_REQUESTS}), near AS ("  # noqa: S608
            "(SELECT event_time FROM live WHERE event_time <= $3 ORDER BY event_time DESC LIMIT 1) UNION ALL "
            "(SELECT event_time FROM live WHERE event_time > $3 ORDER BY event_time LIMIT 1)) "
            f"SELECT n.event_time, (SELECT count(*) FROM (SELECT 1 {examples} "
            "AND v.event_time > least(n.event_time, $3) AND v.event_time <= greatest(n.event_time, $3) "
            "LIMIT $4) c) AS gap FROM near n "
            "ORDER BY gap, abs(extract(epoch FROM (n.event_time - $3::timestamptz))) LIMIT 1",
            model_name,
            kind,
            event_time,
            counted.up_to,
            *args,
        )
        return (row["event_time"], int(row["gap"])) if row is not None else None

    async def latest_suppressed(self, near: Trigger, within_s: float) -> Trigger | None:
        """The most recent trigger of ``near``'s model and kind decided ``cooldown`` within ``within_s`` of it."""
        row = await self.conn.fetchrow(
            f"SELECT {_TRIGGER_COLUMNS} FROM triggers "  # noqa: S608
            "WHERE model_name = $1 AND kind = $2 AND decision = 'cooldown' "
            "AND abs(extract(epoch FROM (event_time - $3::timestamptz))) < $4 "
            "ORDER BY event_time DESC, decided_at DESC LIMIT 1",
            near.model_name,
            near.kind,
            near.event_time,
            within_s,
        )
        return _trigger(row) if row is not None else None

    async def latest_suppressed_counted(self, near: Trigger, counted: CountedGap) -> Trigger | None:
        """The most recent trigger of ``near``'s model and kind decided ``cooldown`` with fewer than
        ``counted.up_to`` examples ``counted`` counts between it and ``near``.

        Those lie between two event times: at or after the ``up_to``-th counted example at or
        before ``near`` and before the ``up_to``-th one after it (no bound where there are fewer).
        """
        if counted.up_to <= 0:
            return None
        examples, args = _counted_examples(counted, 5)
        before = f"SELECT v.event_time {examples} AND v.event_time <= $3 ORDER BY v.event_time DESC OFFSET $4 LIMIT 1"
        after = f"SELECT v.event_time {examples} AND v.event_time > $3 ORDER BY v.event_time OFFSET $4 LIMIT 1"
        row = await self.conn.fetchrow(
            f"SELECT {_TRIGGER_COLUMNS} FROM triggers t "  # noqa: S608
            "WHERE t.model_name = $1 AND t.kind = $2 AND t.decision = 'cooldown' "
            f"AND t.event_time >= coalesce(({before}), '-infinity') "
            f"AND t.event_time < coalesce(({after}), 'infinity') "
            "ORDER BY t.event_time DESC, t.decided_at DESC LIMIT 1",
            near.model_name,
            near.kind,
            near.event_time,
            counted.up_to - 1,
            *args,
        )
        return _trigger(row) if row is not None else None

    async def insert_trigger(self, t: Trigger) -> None:
        await self.conn.execute(
            "INSERT INTO triggers (trigger_id, kind, model_name, source_event_id, episode_id, event_time, "
            "decision, reason, request_id, correlation_id, since, waiting, attempts, episode_attempt) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
            t.trigger_id,
            t.kind,
            t.model_name,
            t.source_event_id,
            t.episode_id,
            t.event_time,
            t.decision,
            t.reason,
            t.request_id,
            t.correlation_id,
            t.since,
            t.waiting,
            t.attempts,
            t.episode_attempt,
        )

    async def mark_requested(self, trigger_id: str, reason: str, request_id: str) -> bool:
        """A ``cooldown`` trigger becomes ``requested`` (False when it no longer is ``cooldown``)."""
        status = await self.conn.execute(
            "UPDATE triggers SET decision = 'requested', reason = $2, request_id = $3 "
            "WHERE trigger_id = $1 AND decision = 'cooldown'",
            trigger_id,
            reason,
            request_id,
        )
        return bool(status.endswith(" 1"))

    async def take_waiting(self, trigger_id: str, request_id: str) -> bool:
        """A waiting trigger makes its next request (False when it is no longer waiting)."""
        status = await self.conn.execute(
            "UPDATE triggers SET waiting = false, attempts = attempts + 1, request_id = $2 "
            "WHERE trigger_id = $1 AND waiting",
            trigger_id,
            request_id,
        )
        return bool(status.endswith(" 1"))

    async def set_waiting(self, trigger_id: str) -> None:
        await self.conn.execute("UPDATE triggers SET waiting = true WHERE trigger_id = $1", trigger_id)

    # -- runs --------------------------------------------------------------------------------

    async def finish_run(self, run_id: str, outcome: ModelTrained | TrainingFailed, *, duration_s: float) -> bool:
        """Store the run's outcome from the event that announces it; False when another attempt of
        the same run finished first (its outcome stands)."""
        values: dict[str, Any] = {"result_event_id": outcome.event_id, "duration_s": duration_s}
        if isinstance(outcome, ModelTrained):
            values |= {
                "status": "succeeded",
                "metrics": outcome.metrics,
                "champion_version": outcome.champion_version,
                "champion_metrics": outcome.champion_metrics,
                "comparison_metrics": outcome.comparison_metrics,
                "n_comparison": outcome.n_comparison,
                "n_train": outcome.n_train,
                "n_holdout": outcome.n_holdout,
                "dataset_fingerprint": outcome.dataset_fingerprint,
                "holdout_fingerprint": outcome.holdout_fingerprint,
                "artifact_key": outcome.artifact_key,
                "artifact_sha256": outcome.artifact_sha256,
                "metadata_key": outcome.metadata_key,
                "metadata_sha256": outcome.metadata_sha256,
            }
        else:
            values |= {"status": "failed", "error_type": outcome.error_type, "error_reason": outcome.reason}
        for col in _JSON_COLUMNS:
            if values.get(col) is not None:
                values[col] = jsonsafe.dumps(values[col])
        assignments = ", ".join(
            f"{col} = ${i}{'::jsonb' if col in _JSON_COLUMNS else ''}" for i, col in enumerate(values, start=2)
        )
        updated = await self.conn.execute(
            f"UPDATE runs SET {assignments}, finished_at = now() "  # noqa: S608
            "WHERE run_id = $1 AND status = 'running'",
            run_id,
            *values.values(),
        )
        return bool(updated.endswith(" 1"))
