"""The training service's SQL (schema ``training``): examples, triggers, runs, champions, outbox."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from driftline import outbox
from driftline.events import derived_event_id
from driftline_training.pipeline import Example


@dataclass(frozen=True, slots=True)
class VectorRow:
    source_event_id: str
    feature_set_version: str
    vector_event_id: str
    entity_id: str
    event_time: datetime
    features: dict[str, Any]


@dataclass(frozen=True, slots=True)
class LabelRow:
    labelled_event_id: str
    label: str
    label_event_id: str
    entity_id: str
    event_time: datetime


@dataclass(frozen=True, slots=True)
class Champion:
    model_name: str
    version: int
    run_id: str
    artifact_bucket: str
    artifact_key: str
    artifact_sha256: str
    feature_names: list[str]
    # The champion's metadata document (from models.promoted): it records the end of the
    # champion's training data, so a run compares on holdout examples the champion never saw.
    metadata_key: str | None = None
    metadata_sha256: str | None = None


@dataclass(frozen=True, slots=True)
class TriggerDecision:
    trigger_id: str
    decision: str  # requested | cooldown | ignored
    reason: str
    request_id: str | None
    request_event_id: str | None
    new: bool  # decided now (False: found from an earlier delivery)


# A drift trigger is asked again after a run that lacked examples, at most this many times in all.
MAX_TRIGGER_ATTEMPTS = 5


def request_event_id_of(request_id: str) -> str:
    """Event id of the TrainingRequested record of a request (see handlers.request_record)."""
    return derived_event_id("training-request", request_id)


RUN_COLUMNS = (
    "run_id, request_id, request_event_id, model_name, status, reason, requested_by, trigger, drift_episode_id, "
    "correlation_id, parameters, started_at, finished_at, duration_s, metrics, champion_version, champion_metrics, "
    "n_train, n_holdout, dataset_fingerprint, holdout_fingerprint, artifact_key, artifact_sha256, metadata_key, "
    "metadata_sha256, error_type, error_reason, result_event_id, attempts, comparison_metrics, n_comparison"
)
_JSON_COLUMNS = ("parameters", "metrics", "champion_metrics", "comparison_metrics")


def run_to_dict(row: asyncpg.Record) -> dict[str, Any]:
    out = dict(row)
    for col in _JSON_COLUMNS:
        if out.get(col) is not None:
            out[col] = json.loads(out[col])
    return out


class TrainingStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    # -- examples ---------------------------------------------------------------------------

    async def save_examples(self, vectors: Sequence[VectorRow], labels: Sequence[LabelRow]) -> None:
        """Upsert vectors and labels in one transaction (a replay rewrites the same rows)."""
        async with self.pool.acquire() as conn, conn.transaction():
            if vectors:
                await conn.executemany(
                    "INSERT INTO vectors (source_event_id, feature_set_version, vector_event_id, entity_id, "
                    "event_time, features) VALUES ($1, $2, $3, $4, $5, $6::jsonb) "
                    "ON CONFLICT (source_event_id, feature_set_version) DO UPDATE SET "
                    "vector_event_id = EXCLUDED.vector_event_id, entity_id = EXCLUDED.entity_id, "
                    "event_time = EXCLUDED.event_time, features = EXCLUDED.features",
                    [
                        (
                            v.source_event_id,
                            v.feature_set_version,
                            v.vector_event_id,
                            v.entity_id,
                            v.event_time,
                            json.dumps(v.features, allow_nan=False),
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
                    [(lb.labelled_event_id, lb.label, lb.label_event_id, lb.entity_id, lb.event_time) for lb in labels],
                )

    async def example_counts(self, feature_set_version: str, classes: Sequence[str]) -> dict[str, int]:
        row = await self.pool.fetchrow(
            "SELECT (SELECT count(*) FROM vectors WHERE feature_set_version = $1) AS vectors, "
            "(SELECT count(*) FROM labels) AS labels, "
            "(SELECT count(*) FROM vectors v JOIN labels l ON l.labelled_event_id = v.source_event_id "
            " WHERE v.feature_set_version = $1 AND l.label = ANY($2::text[])) AS labelled",
            feature_set_version,
            list(classes),
        )
        assert row is not None
        return {k: int(row[k]) for k in ("vectors", "labels", "labelled")}

    async def select_examples(
        self, feature_set_version: str, classes: Sequence[str], *, since: datetime | None, limit: int
    ) -> list[Example]:
        """The most recent ``limit`` labelled examples (at or after ``since`` when given)."""
        rows = await self.pool.fetch(
            "SELECT v.source_event_id, v.event_time, v.features, l.label FROM vectors v "
            "JOIN labels l ON l.labelled_event_id = v.source_event_id "
            "WHERE v.feature_set_version = $1 AND l.label = ANY($2::text[]) "
            "AND ($3::timestamptz IS NULL OR v.event_time >= $3) "
            "ORDER BY v.event_time DESC, v.source_event_id DESC LIMIT $4",
            feature_set_version,
            list(classes),
            since,
            limit,
        )
        return [Example(r["source_event_id"], r["event_time"], json.loads(r["features"]), r["label"]) for r in rows]

    # -- automatic triggers (drift episodes, the first model) ------------------------------

    async def decide_trigger(
        self,
        *,
        trigger_id: str,
        kind: str,
        model_name: str,
        event_time: datetime,
        cooldown_s: float,
        source_event_id: str | None,
        episode_id: str | None,
        request: tuple[str, dict[str, Any]] | None,
        ignore_reason: str | None = None,
        correlation_id: str | None = None,
        since: datetime | None = None,
        defer: bool = False,
    ) -> TriggerDecision:
        """Decide once per trigger, under a per-model lock: request a run, or not (cooldown).

        ``request`` is the (topic, record) to stage when the decision is to request a run. With
        ``defer`` a requested trigger stages nothing yet: it waits (holding the cooldown) until
        enough labelled examples exist, and :meth:`retry_trigger` then stages its request. A
        trigger seen before returns its stored decision (``new`` False).
        """
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('training-trigger:' || $1))", model_name)
            existing = await conn.fetchrow(
                "SELECT decision, reason, request_id FROM triggers WHERE trigger_id = $1", trigger_id
            )
            if existing is not None:
                request_id = existing["request_id"]
                event_id = request_event_id_of(request_id) if request_id else None
                return TriggerDecision(
                    trigger_id, existing["decision"], existing["reason"], request_id, event_id, new=False
                )
            if ignore_reason is not None:
                decision, reason = "ignored", ignore_reason
            else:
                last = await _nearest_live_request(conn, model_name, kind, event_time)
                decision, reason = cooldown_decision(last, event_time, cooldown_s)
            request_id = request_event_id = None
            waiting = decision == "requested" and defer
            if waiting:
                reason = f"{reason}; waiting for labelled examples"
            elif decision == "requested" and request is not None:
                topic, record = request
                request_id, request_event_id = record["request_id"], record["event_id"]
                await outbox.stage(conn, topic, record)
            await conn.execute(
                "INSERT INTO triggers (trigger_id, kind, model_name, source_event_id, episode_id, event_time, "
                "decision, reason, request_id, correlation_id, since, waiting, attempts) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
                trigger_id,
                kind,
                model_name,
                source_event_id,
                episode_id,
                event_time,
                decision,
                reason,
                request_id,
                correlation_id,
                since,
                waiting,
                0 if waiting else 1,  # requests made so far
            )
            return TriggerDecision(trigger_id, decision, reason, request_id, request_event_id, new=True)

    async def revive_suppressed(
        self,
        failed_trigger_id: str,
        cooldown_s: float,
        make_request: Callable[[dict[str, Any]], tuple[str, dict[str, Any]]],
    ) -> TriggerDecision | None:
        """After the final failure of a trigger's run, request a run for a drift it suppressed.

        A drift that came within the cooldown of ``failed_trigger_id`` while that run was pending
        was decided ``cooldown``; now that the run failed (and will not be asked again) it would
        be lost. The most recent such trigger is re-decided, unless another run that has not
        failed lies within its cooldown. ``make_request`` builds the (topic, record) to stage
        from the trigger's row. Returns the new decision, or None.
        """
        async with self.pool.acquire() as conn, conn.transaction():
            failed = await conn.fetchrow(
                "SELECT model_name, kind, event_time, waiting FROM triggers WHERE trigger_id = $1", failed_trigger_id
            )
            if failed is None or failed["waiting"]:
                return None  # a waiting trigger will be asked again: it still stands for the episode
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext('training-trigger:' || $1))", failed["model_name"]
            )
            row = await conn.fetchrow(
                "SELECT trigger_id, model_name, episode_id, source_event_id, correlation_id, since, event_time "
                "FROM triggers WHERE model_name = $1 AND kind = $2 AND decision = 'cooldown' "
                "AND abs(extract(epoch FROM (event_time - $3::timestamptz))) < $4 "
                "ORDER BY event_time DESC, decided_at DESC LIMIT 1",
                failed["model_name"],
                failed["kind"],
                failed["event_time"],
                cooldown_s,
            )
            if row is None:
                return None
            last = await _nearest_live_request(conn, row["model_name"], failed["kind"], row["event_time"])
            decision, _ = cooldown_decision(last, row["event_time"], cooldown_s)
            if decision != "requested":
                return None
            topic, record = make_request(dict(row))
            reason = f"the run requested for {failed_trigger_id} failed; no other run lies within the cooldown"
            status = await conn.execute(
                "UPDATE triggers SET decision = 'requested', reason = $2, request_id = $3 "
                "WHERE trigger_id = $1 AND decision = 'cooldown'",
                row["trigger_id"],
                reason,
                record["request_id"],
            )
            if not status.endswith(" 1"):
                return None
            await outbox.stage(conn, topic, record)
            return TriggerDecision(
                row["trigger_id"], "requested", reason, record["request_id"], record["event_id"], new=True
            )

    async def waiting_triggers(self) -> list[dict[str, Any]]:
        """Drift triggers whose run lacked labelled examples: asked again once they exist."""
        rows = await self.pool.fetch(
            "SELECT trigger_id, model_name, episode_id, source_event_id, correlation_id, since, attempts "
            "FROM triggers WHERE waiting ORDER BY decided_at"
        )
        return [dict(r) for r in rows]

    async def count_labelled(self, feature_set_version: str, classes: Sequence[str], since: datetime | None) -> int:
        return int(
            await self.pool.fetchval(
                "SELECT count(*) FROM vectors v JOIN labels l ON l.labelled_event_id = v.source_event_id "
                "WHERE v.feature_set_version = $1 AND l.label = ANY($2::text[]) "
                "AND ($3::timestamptz IS NULL OR v.event_time >= $3)",
                feature_set_version,
                list(classes),
                since,
            )
        )

    async def retry_trigger(self, trigger_id: str, topic: str, record: dict[str, Any]) -> bool:
        """Stage a new request for a waiting trigger (once: False when it is no longer waiting)."""
        async with self.pool.acquire() as conn, conn.transaction():
            status = await conn.execute(
                "UPDATE triggers SET waiting = false, attempts = attempts + 1, request_id = $2 "
                "WHERE trigger_id = $1 AND waiting",
                trigger_id,
                record["request_id"],
            )
            if not status.endswith(" 1"):
                return False
            await outbox.stage(conn, topic, record)
            return True

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

    async def start_run(
        self,
        *,
        run_id: str,
        request_id: str,
        request_event_id: str,
        model_name: str,
        reason: str,
        requested_by: str,
        trigger: str,
        drift_episode_id: str | None,
        correlation_id: str,
        parameters: dict[str, str],
    ) -> int:
        """Record an attempt of a run as running (again, after a crash or an outage); returns its number.

        A second attempt may start while an earlier one still runs elsewhere (a redelivery after a
        rebalance): that is safe, since artifacts are stored under content-addressed keys and only
        the first attempt to finish announces its outcome (:meth:`finish_run`).
        """
        attempts = await self.pool.fetchval(
            "INSERT INTO runs (run_id, request_id, request_event_id, model_name, status, reason, requested_by, "
            "trigger, drift_episode_id, correlation_id, parameters, attempts) "
            "VALUES ($1, $2, $3, $4, 'running', $5, $6, $7, $8, $9, $10::jsonb, 1) "
            "ON CONFLICT (run_id) DO UPDATE SET started_at = now(), attempts = runs.attempts + 1 "
            "WHERE runs.status = 'running' RETURNING attempts",
            run_id,
            request_id,
            request_event_id,
            model_name,
            reason,
            requested_by,
            trigger,
            drift_episode_id,
            correlation_id,
            json.dumps(parameters),
        )
        return int(attempts or 0)

    async def finish_run(
        self,
        run_id: str,
        *,
        status: str,
        topic: str,
        record: dict[str, Any],
        wait_trigger: str | None = None,
        **fields: Any,
    ) -> None:
        """Store the run's outcome and stage the event that announces it, in one transaction.

        ``wait_trigger``: the drift trigger to ask again once enough labelled examples exist.
        """
        values = {"status": status, "result_event_id": record["event_id"], **fields}
        for col in _JSON_COLUMNS:
            if values.get(col) is not None:
                values[col] = json.dumps(values[col], allow_nan=False)
        assignments = ", ".join(
            f"{col} = ${i}{'::jsonb' if col in _JSON_COLUMNS else ''}" for i, col in enumerate(values, start=2)
        )
        async with self.pool.acquire() as conn, conn.transaction():
            updated = await conn.execute(
                f"UPDATE runs SET {assignments}, finished_at = now() "  # noqa: S608
                "WHERE run_id = $1 AND status = 'running'",
                run_id,
                *values.values(),
            )
            if not updated.endswith(" 1"):
                return  # another attempt of the same run finished first; its outcome stands
            await outbox.stage(conn, topic, record)
            if wait_trigger is not None:
                await conn.execute(
                    "UPDATE triggers SET waiting = true WHERE trigger_id = $1 AND attempts < $2",
                    wait_trigger,
                    MAX_TRIGGER_ATTEMPTS,
                )

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
            json.dumps(champion.feature_names),
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
        return Champion(
            row["model_name"],
            row["version"],
            row["run_id"],
            row["artifact_bucket"],
            row["artifact_key"],
            row["artifact_sha256"],
            json.loads(row["feature_names"]),
            row["metadata_key"],
            row["metadata_sha256"],
        )

    async def list_champions(self) -> list[dict[str, Any]]:
        rows = await self.pool.fetch(
            "SELECT model_name, version, run_id, artifact_key, artifact_sha256, action, promoted_event_id, updated_at "
            "FROM champions ORDER BY model_name"
        )
        return [dict(r) for r in rows]


async def _nearest_live_request(conn: Any, model_name: str, kind: str, event_time: datetime) -> datetime | None:
    """Event time of the requested trigger nearest to ``event_time`` whose run has not failed for good.

    A trigger counts while its run is pending, running or succeeded, and while it waits to be
    asked again (labels lag); a run that failed does not use up the cooldown of other drifts.
    """
    value: datetime | None = await conn.fetchval(
        "SELECT t.event_time FROM triggers t WHERE t.model_name = $1 AND t.kind = $2 AND t.decision = 'requested' "
        "AND (t.waiting OR NOT EXISTS "
        "(SELECT 1 FROM runs r WHERE r.request_id = t.request_id AND r.status = 'failed')) "
        "ORDER BY abs(extract(epoch FROM (t.event_time - $3::timestamptz))) LIMIT 1",
        model_name,
        kind,
        event_time,
    )
    return value


def cooldown_decision(last_requested: datetime | None, event_time: datetime, cooldown_s: float) -> tuple[str, str]:
    """Request a run unless another automatic run of the model was requested within the cooldown."""
    if last_requested is None:
        return "requested", "no earlier run was requested for this model"
    gap = abs((event_time - last_requested).total_seconds())
    if gap < cooldown_s:
        return "cooldown", (
            f"a run was requested for a drift at {last_requested.isoformat()}, {gap:.1f}s from this one "
            f"(cooldown {cooldown_s:g}s)"
        )
    return "requested", f"last requested run was {gap:.1f}s away (cooldown {cooldown_s:g}s)"
