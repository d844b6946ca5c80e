"""Stack initialisation from the topic catalog: topics, schema subjects, the artifact bucket.

Idempotent: a second run changes nothing. ``driftline stack init`` calls it after ``make up``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from driftline.artifacts import ArtifactStore
from driftline.catalog import Catalog, canonical_schema_str, default_catalog
from driftline.kafka import ensure_topics
from driftline.serde import SchemaRegistryClient
from driftline.settings import StackSettings


@dataclass
class InitReport:
    topics_created: list[str] = field(default_factory=list)
    schemas: dict[str, int] = field(default_factory=dict)  # subject → schema id
    bucket: str = ""


async def register_schemas(registry: SchemaRegistryClient, catalog: Catalog, prefix: str = "") -> dict[str, int]:
    """Register every topic's schema under ``<topic>-value`` with BACKWARD compatibility.

    A schema change that is not backward compatible is refused here by the registry.
    """
    ids: dict[str, int] = {}
    for topic in catalog:
        subject = topic.subject(prefix)
        await registry.set_compatibility(subject, "BACKWARD")
        ids[subject] = await registry.register(subject, canonical_schema_str(topic.record))
    return ids


async def init_stack(stack: StackSettings, catalog: Catalog | None = None) -> InitReport:
    catalog = catalog or default_catalog()
    report = InitReport()
    report.topics_created = await ensure_topics(
        stack.kafka,
        catalog,
        stack.topic_prefix,
        replication_factor=stack.topic_replication_factor,
    )
    registry = SchemaRegistryClient.from_settings(stack)
    try:
        report.schemas = await register_schemas(registry, catalog, stack.topic_prefix)
    finally:
        await registry.close()
    store = ArtifactStore.from_settings(stack)
    await store.ensure_bucket()
    report.bucket = store.bucket
    return report


_TENANT = re.compile(r"^[a-z][a-z0-9-]{2,40}$")


async def init_isolated(base: StackSettings, name: str) -> StackSettings:
    """An isolated slice of a stack: topics and subjects prefixed ``<name>.``, a database and a
    bucket of that name. Returns the settings to give services (tests and demo runs use it)."""
    if not _TENANT.match(name):
        raise ValueError(f"bad name {name!r}: lower-case letters, digits and '-', 3 to 41 characters")
    dsn = base.postgres_dsn.get_secret_value()
    database = name.replace("-", "_")
    conn = await asyncpg.connect(dsn, ssl=base.postgres_ssl())
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database):
            await conn.execute(f'CREATE DATABASE "{database}"')
    finally:
        await conn.close()
    stack = base.model_copy(
        update={
            "topic_prefix": f"{name}.",
            "postgres_dsn": type(base.postgres_dsn)(urlunsplit(urlsplit(dsn)._replace(path=f"/{database}"))),
            "artifact_bucket": name,
        }
    )
    await init_stack(stack)
    return stack


async def drop_isolated_database(base: StackSettings, isolated: StackSettings) -> None:
    database = urlsplit(isolated.postgres_dsn.get_secret_value()).path.lstrip("/")
    conn = await asyncpg.connect(base.postgres_dsn.get_secret_value(), ssl=base.postgres_ssl())
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    finally:
        await conn.close()
