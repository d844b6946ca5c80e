"""Non-finite statistics reach PostgreSQL's jsonb columns as null, not as a refused ``-Infinity``.

A window summary with a Page-Hinkley minimum of ``-inf`` was refused by PostgreSQL, and monitoring
retried the same batch forever. The real database and the service's own migrations are used here.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import driftline_monitoring
from driftline.db import apply_migrations, create_pool
from driftline_monitoring.drift import WindowSummary
from driftline_monitoring.store import MonitoringStore
from tests.support import Namespace

MIGRATIONS = Path(driftline_monitoring.__file__).parent / "migrations"


async def test_a_window_summary_with_infinite_statistics_is_stored(namespace: Namespace) -> None:
    pool = await create_pool(namespace.stack.postgres_dsn.get_secret_value(), "monitoring")
    try:
        await apply_migrations(pool, "monitoring", MIGRATIONS)
        t = datetime(2026, 1, 1, tzinfo=UTC)
        summary = WindowSummary(
            check_id="c-inf",
            model_name="m",
            model_version=1,
            window_start=t,
            window_end=t + timedelta(minutes=5),
            window_size=300,
            records_seen=300,
            drifted=False,
            kind=None,
            features={"x": {"psi": float("inf"), "ks": float("nan"), "mean": 1.5}},
            score={"psi": float("-inf")},
            performance={"page_hinkley": float("-inf"), "accuracy": 0.9, "history": [1.0, float("nan")]},
        )
        await MonitoringStore(pool).save_summary(summary)
        row = await pool.fetchrow(
            "SELECT features::text, score::text, performance::text FROM window_summaries WHERE check_id = 'c-inf'"
        )
        assert row is not None
        assert json.loads(row["features"]) == {"x": {"psi": None, "ks": None, "mean": 1.5}}
        assert json.loads(row["score"]) == {"psi": None}
        assert json.loads(row["performance"]) == {"page_hinkley": None, "accuracy": 0.9, "history": [1.0, None]}
    finally:
        await pool.close()
