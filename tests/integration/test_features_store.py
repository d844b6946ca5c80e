"""The features online store's batch write (one statement) on the real database and the service's
migrations: idempotent by vector id, the latest vector per entity by (event time, source offset)
whatever the order, one entity several times in one batch, non-finite numbers stored as null."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import driftline_features
from driftline.db import apply_migrations, create_pool
from driftline_features.store import OnlineStore, VectorRow
from tests.support import Namespace

MIGRATIONS = Path(driftline_features.__file__).parent / "migrations"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def row(event_id: str, entity: str, minute: int, offset: int, loan: float, project: str = "p") -> VectorRow:
    return VectorRow(
        event_id=event_id,
        source_event_id=f"raw-{event_id}",
        entity_id=entity,
        feature_set_version="1",
        event_time=T0 + timedelta(minutes=minute),
        features={"loan": loan, "car": "3", "none": None},
        late=False,
        correlation_id=f"c-{event_id}",
        source_partition=1,
        source_offset=offset,
        project=project,
    )


async def test_batch_write_is_idempotent_and_keeps_the_latest_vector_per_entity(namespace: Namespace) -> None:
    pool = await create_pool(namespace.stack.postgres_dsn.get_secret_value(), "features")
    try:
        await apply_migrations(pool, "features", MIGRATIONS)
        store = OnlineStore(pool)
        batch = [
            row("a2", "A", 2, 11, 20.0),
            row("a1", "A", 1, 10, 10.0),  # older, later in the batch: not the latest
            row("b1", "B", 1, 12, math.nan),
            row("a2-other", "A", 2, 9, 99.0, project="q"),  # same entity id, another project
        ]
        await store.write(batch)
        await store.write(batch)  # a replay changes nothing
        assert await pool.fetchval("SELECT count(*) FROM vectors") == 4
        latest = await store.latest("A", "1", "p")
        assert latest is not None and latest["event_id"] == "a2" and latest["features"]["loan"] == 20.0
        other = await store.latest("A", "1", "q")
        assert other is not None and other["event_id"] == "a2-other"
        b = await store.latest("B", "1", "p")
        assert b is not None and b["features"] == {"loan": None, "car": "3", "none": None}
        stored = await pool.fetchval("SELECT features::text FROM vectors WHERE event_id = 'a1'")
        assert json.loads(stored) == {"loan": 10.0, "car": "3", "none": None}

        await store.write([row("a0", "A", 0, 5, 1.0)])  # out of order: stored, not the latest
        latest = await store.latest("A", "1", "p")
        assert latest is not None and latest["event_id"] == "a2"
        await store.write([row("a2-tie", "A", 2, 12, 5.0)])  # same event time, later offset: newer
        latest = await store.latest("A", "1", "p")
        assert latest is not None and latest["event_id"] == "a2-tie"
        await store.write([])
        assert await pool.fetchval("SELECT count(*) FROM vectors") == 6
        assert await store.find(["a1", "nope"]) == {"a1": ({"loan": 10.0, "car": "3", "none": None}, False)}
    finally:
        await pool.close()
