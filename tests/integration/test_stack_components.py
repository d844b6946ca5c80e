"""The shared library against the real PostgreSQL, MinIO and schema registry."""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path

import asyncpg
import httpx
import pytest
from minio import Minio

from driftline import db
from driftline.api import create_app
from driftline.artifacts import ArtifactIntegrityError, ArtifactNotFound, ArtifactStore
from driftline.catalog import canonical_schema_str, default_catalog, load_schema_json
from driftline.runtime import Runtime
from driftline.serde import RegistryError, SchemaRegistryClient
from driftline.stack import init_stack, register_schemas
from tests.support import Namespace

# --- artifacts ------------------------------------------------------------------------------------


async def test_an_artifact_comes_back_only_with_its_digest(namespace: Namespace) -> None:
    store = ArtifactStore.from_settings(namespace.stack)
    ref = await store.put("models/m/run-1/model.skops", b"model bytes")
    assert await store.get(ref.key, ref.sha256) == b"model bytes"
    assert ref.size == len(b"model bytes")

    # Someone overwrites the object behind the platform's back.
    s = namespace.stack
    raw = Minio(s.minio_endpoint, s.minio_access_key, s.minio_secret_key.get_secret_value(), secure=False)
    import io

    raw.put_object(s.artifact_bucket, ref.key, io.BytesIO(b"evil bytes!"), 11)
    with pytest.raises(ArtifactIntegrityError, match="refusing"):
        await store.get(ref.key, ref.sha256)
    with pytest.raises(ArtifactNotFound):
        await store.get("models/m/none", ref.sha256)


# --- schema registry ------------------------------------------------------------------------------


async def test_the_registry_refuses_a_breaking_schema_change_and_accepts_a_compatible_one(
    namespace: Namespace,
) -> None:
    registry = SchemaRegistryClient.from_settings(namespace.stack)
    subject = f"{namespace.prefix}labels-value"  # registered BACKWARD by the namespace fixture
    try:
        current = load_schema_json("LabelRecorded")
        breaking = copy.deepcopy(current)
        breaking["fields"].append({"name": "confidence", "type": "double"})
        compatible = copy.deepcopy(current)
        compatible["fields"].append({"name": "confidence", "type": ["null", "double"], "default": None})
        assert not await registry.is_compatible(subject, json.dumps(breaking))
        with pytest.raises(RegistryError, match="409"):
            await registry.register(subject, json.dumps(breaking))
        assert await registry.is_compatible(subject, json.dumps(compatible))
        new_id = await registry.register(subject, json.dumps(compatible))
        assert new_id != await registry.lookup(subject, canonical_schema_str("LabelRecorded"))
    finally:
        await registry.close()


async def test_registering_the_catalog_again_changes_nothing(namespace: Namespace) -> None:
    registry = SchemaRegistryClient.from_settings(namespace.stack)
    try:
        first = await register_schemas(registry, default_catalog(), namespace.prefix)
        second = await register_schemas(registry, default_catalog(), namespace.prefix)
        assert first == second
        assert set(first) == {t.subject(namespace.prefix) for t in default_catalog()}
    finally:
        await registry.close()


async def test_stack_init_is_idempotent(namespace: Namespace) -> None:
    report = await init_stack(namespace.stack)  # the fixture already created everything
    assert report.topics_created == []
    assert report.bucket == namespace.stack.artifact_bucket


# --- PostgreSQL migrations ------------------------------------------------------------------------


async def test_migrations_apply_in_order_once_even_when_two_copies_start_together(
    namespace: Namespace, tmp_path: Path
) -> None:
    (tmp_path / "001_init.sql").write_text("CREATE TABLE things (id int PRIMARY KEY);")
    (tmp_path / "002_more.sql").write_text(
        "ALTER TABLE things ADD COLUMN name text; INSERT INTO things VALUES (1, 'a');"
    )
    dsn = namespace.stack.postgres_dsn.get_secret_value()
    pool_a = await db.create_pool(dsn, "svc")
    pool_b = await db.create_pool(dsn, "svc")
    try:
        results = await asyncio.gather(
            db.apply_migrations(pool_a, "svc", tmp_path), db.apply_migrations(pool_b, "svc", tmp_path)
        )
        assert sorted(results, key=len) == [[], ["001_init", "002_more"]]
        assert await db.apply_migrations(pool_a, "svc", tmp_path) == []
        async with pool_a.acquire() as conn:
            assert await conn.fetchval("SELECT name FROM things WHERE id = 1") == "a"  # search_path = svc
        async with pool_a.acquire() as conn:  # a released connection keeps its search_path
            assert await conn.fetchval("SELECT count(*) FROM things") == 1
    finally:
        await pool_a.close()
        await pool_b.close()


async def test_a_failing_migration_leaves_nothing_behind(namespace: Namespace, tmp_path: Path) -> None:
    (tmp_path / "001_ok.sql").write_text("CREATE TABLE a (id int);")
    (tmp_path / "002_bad.sql").write_text("CREATE TABLE b (id int); SELECT nonsense FROM nowhere;")
    pool = await db.create_pool(namespace.stack.postgres_dsn.get_secret_value(), "broken")
    try:
        with pytest.raises(asyncpg.UndefinedTableError):
            await db.apply_migrations(pool, "broken", tmp_path)
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT to_regclass('broken.a')") is None
    finally:
        await pool.close()


# --- readiness ------------------------------------------------------------------------------------


async def test_readyz_reports_each_dependency_and_fails_when_one_is_down(namespace: Namespace) -> None:
    rt = await Runtime.start("readytest", namespace.stack, postgres_schema="readytest", artifacts=True)
    app = create_app("readytest", title="t", readiness=rt.readiness)
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            r = await client.get("/readyz")
            assert r.status_code == 200, r.text
            assert r.json()["checks"] == {
                "kafka": "ok",
                "schema_registry": "ok",
                "postgres": "ok",
                "object_store": "ok",
            }
            assert (await client.get("/healthz")).json()["status"] == "ok"
            assert "driftline_http_requests_total" in (await client.get("/metrics")).text

            await rt.pool.close()  # type: ignore[union-attr]  # the database "goes away"
            r = await client.get("/readyz")
            assert r.status_code == 503
            assert r.json()["checks"]["postgres"].startswith("failed")
            assert r.json()["checks"]["kafka"] == "ok"
    finally:
        rt.pool = None
        await rt.stop()
