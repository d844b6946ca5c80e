"""PostgreSQL: an asyncpg pool per service and ordered SQL migrations per service schema.

Each service owns one schema (``features``, ``training``…). Its migrations are the files
``migrations/NNN_name.sql`` of the service, applied in the order of their numbers at start-up inside a transaction,
under an advisory lock so two copies of a service starting together do not race, and recorded
in ``<schema>.schema_migrations``. Every connection of the pool has ``search_path`` set to the
service's schema.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import asyncpg

from driftline.logging import get_logger
from driftline.retry import retry_transient

log = get_logger(__name__)

_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")
_MIGRATION_FILE = re.compile(r"^(\d+)_[\w-]+\.sql$")


def _check_schema(schema: str) -> str:
    if not _SCHEMA_NAME.match(schema):
        raise ValueError(f"invalid schema name {schema!r}")
    return schema


async def create_pool(dsn: str, schema: str, *, min_size: int = 1, max_size: int = 5, ssl: Any = None) -> asyncpg.Pool:
    """A pool whose connections use ``schema`` first; waits (with backoff) for the database.

    ``ssl``: asyncpg's TLS argument (:meth:`driftline.settings.StackSettings.postgres_ssl`)."""
    _check_schema(schema)

    async def connect() -> asyncpg.Pool:
        # The schema must exist before connections set their search_path to it.
        conn = await asyncpg.connect(dsn, ssl=ssl)
        try:
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        finally:
            await conn.close()
        # A startup parameter, not a SET: the pool's RESET ALL on release returns to it.
        return await asyncpg.create_pool(
            dsn, min_size=min_size, max_size=max_size, ssl=ssl, server_settings={"search_path": f"{schema}, public"}
        )

    pool: asyncpg.Pool = await retry_transient(connect, what=f"postgres pool ({schema})")
    return pool


def migration_files(directory: Path) -> list[tuple[str, Path]]:
    """The migrations of ``directory`` as (version, path), in the order of their numbers.

    By number, not by name: ``10_x.sql`` comes after ``9_y.sql`` even unpadded. Two files with the
    same number (``001_a.sql`` and ``1_b.sql``) are refused, since their order would be a guess.
    """
    numbered: dict[int, Path] = {}
    for path in directory.glob("*.sql"):
        m = _MIGRATION_FILE.match(path.name)
        if not m:
            raise ValueError(f"migration file {path.name} does not look like NNN_name.sql")
        number = int(m.group(1))
        if number in numbered:
            first, second = sorted((numbered[number].name, path.name))
            raise ValueError(f"migration files {first} and {second} have the same number {number}")
        numbered[number] = path
    return [(numbered[n].stem, numbered[n]) for n in sorted(numbered)]


async def apply_migrations(pool: asyncpg.Pool, schema: str, directory: Path) -> list[str]:
    """Apply the not-yet-applied migrations of ``directory``; returns the versions applied."""
    _check_schema(schema)
    lock_key = int.from_bytes(
        hashlib.sha256(f"driftline-migrations:{schema}".encode()).digest()[:8], "big", signed=True
    )
    applied: list[str] = []
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", lock_key)
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {schema}.schema_migrations ("
            " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch(f"SELECT version FROM {schema}.schema_migrations")}  # noqa: S608
        await conn.execute(f"SET LOCAL search_path TO {schema}, public")
        for version, path in migration_files(directory):
            if version in done:
                continue
            await conn.execute(path.read_text())
            await conn.execute(f"INSERT INTO {schema}.schema_migrations (version) VALUES ($1)", version)  # noqa: S608
            applied.append(version)
    if applied:
        log.info("migrations_applied", schema=schema, versions=applied)
    return applied


async def ping(pool: asyncpg.Pool) -> None:
    async with pool.acquire(timeout=5) as conn:
        await conn.fetchval("SELECT 1")


def row_with_json(row: asyncpg.Record, columns: Iterable[str]) -> dict[str, Any]:
    """``row`` as a dict, with the JSON text of ``columns`` decoded (NULL stays None)."""
    out = dict(row)
    for col in columns:
        if out.get(col) is not None:
            out[col] = json.loads(out[col])
    return out
