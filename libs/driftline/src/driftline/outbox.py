"""Transactional outbox: an event is stored with the state change it announces, then published.

A handler or an API route writes its state and the event that announces it in one PostgreSQL
transaction (:func:`stage`), publishes after the commit (:meth:`Outbox.publish`) and marks the
row published. If the process dies in between, the row stays unpublished and
:meth:`Outbox.relay` (at start-up and then periodically) publishes it. So a state change is never
announced without being stored, nor stored without being announced; and a replayed input finds
its event already published and emits nothing new. Event ids are deterministic where it matters,
so the rare double publication (acknowledged, then a crash before the row was marked) is an
upsert downstream.

The table (:data:`TABLE`) lives in the service's own schema; :meth:`Outbox.ensure_table`
creates it when missing, so a service that uses an outbox needs no migration of its own for it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import asyncpg

from driftline.events import epoch_ms
from driftline.logging import get_logger
from driftline.producer import EventProducer

log = get_logger(__name__)


def record_to_json(record: dict[str, Any]) -> str:
    """A record as JSON; datetimes become epoch millis, which Avro timestamp-millis accepts as is."""

    def default(value: Any) -> Any:
        if isinstance(value, datetime):
            return epoch_ms(value)
        raise TypeError(f"cannot store {type(value).__name__} in the outbox")

    return json.dumps(record, default=default, allow_nan=False)


async def stage(conn: asyncpg.Connection, topic: str, record: dict[str, Any]) -> bool:
    """Store ``record`` for ``topic`` in the caller's transaction; False when it was already there."""
    status = await conn.execute(
        "INSERT INTO outbox (event_id, topic, record) VALUES ($1, $2, $3::jsonb) ON CONFLICT (event_id) DO NOTHING",
        str(record["event_id"]),
        topic,
        record_to_json(record),
    )
    return bool(status.endswith(" 1"))


TABLE = """
CREATE TABLE IF NOT EXISTS outbox (
    event_id     text PRIMARY KEY,
    topic        text NOT NULL,
    record       jsonb NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);
CREATE INDEX IF NOT EXISTS outbox_unpublished ON outbox (created_at) WHERE published_at IS NULL;
"""


class Outbox:
    """Publishes staged events and marks them published."""

    def __init__(self, pool: asyncpg.Pool, producer: EventProducer) -> None:
        self.pool = pool
        self.producer = producer

    async def ensure_table(self) -> None:
        """Create the outbox table in the pool's schema (its search_path) when it is missing.

        Under a transaction-scoped advisory lock: two copies starting at once would otherwise race
        on ``CREATE TABLE IF NOT EXISTS`` (PostgreSQL can fail the loser with a unique violation)."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('driftline-outbox:' || current_schema()))")
            await conn.execute(TABLE)

    async def publish(self, event_ids: Sequence[str]) -> int:
        """Publish those of ``event_ids`` that are staged and not yet published; returns how many."""
        if not event_ids:
            return 0
        rows = await self.pool.fetch(
            "SELECT event_id, topic, record FROM outbox WHERE event_id = ANY($1::text[]) AND published_at IS NULL "
            "ORDER BY created_at, event_id",
            list(event_ids),
        )
        return await self._send(rows)

    async def relay(self, *, older_than_s: float = 10.0, limit: int = 200) -> int:
        """Publish rows left unpublished for ``older_than_s`` (a crash between commit and publish)."""
        rows = await self.pool.fetch(
            "SELECT event_id, topic, record FROM outbox WHERE published_at IS NULL "
            "AND created_at < now() - make_interval(secs => $1) ORDER BY created_at, event_id LIMIT $2",
            older_than_s,
            limit,
        )
        if rows:
            log.info("outbox_relaying", count=len(rows))
        return await self._send(rows)

    async def _send(self, rows: Sequence[asyncpg.Record]) -> int:
        if not rows:
            return 0
        await self.producer.publish_many([(r["topic"], json.loads(r["record"])) for r in rows])
        await self.pool.execute(
            "UPDATE outbox SET published_at = now() WHERE event_id = ANY($1::text[]) AND published_at IS NULL",
            [r["event_id"] for r in rows],
        )
        return len(rows)

    async def run_relay(self, *, interval_s: float = 5.0, stopping: Callable[[], bool] = lambda: False) -> None:
        """Background loop around :meth:`relay`; logs and carries on through outages."""
        first = True
        while not stopping():
            try:
                await self.relay(older_than_s=0.0 if first else 10.0)
                first = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("outbox_relay_failed", error=repr(exc)[:300])
            await asyncio.sleep(interval_s)
