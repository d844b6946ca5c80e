"""Outages of the real stack's components under load: readiness says so within seconds, comes
back, and nothing is lost or doubled.

Each test runs ingestion, features and training, and posts loan applications over HTTP with the
SDK (retrying what was not accepted, with the same ids) before, during and after the outage. It
stops one component of the test stack with the project's own script (``infra/stack.sh stop
COMPONENT``), watches training's ``/readyz`` (training uses all four: the broker, the schema
registry, PostgreSQL and the object store), starts the component again (``infra/stack.sh start
COMPONENT``) and checks that the service is ready again and still answers an API call that needs
the component, without a restart of the service; then that every accepted event has exactly one
feature vector in the online store and one row in training's table (no consumer wedged, nothing
lost, nothing doubled).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from driftline.settings import LOCAL_API_TOKEN
from driftline_cli.examples.loan_approval.generator import LoanStream
from driftline_sdk import Publisher, PublishError
from tests.support import Namespace, ServiceProcess, eventually

ROOT = Path(__file__).resolve().parents[2]
AUTH = {"Authorization": f"Bearer {LOCAL_API_TOKEN}"}

# component of infra/stack.sh -> the name of its /readyz check
COMPONENTS = {"kafka": "kafka", "postgres": "postgres", "minio": "object_store", "apicurio": "schema_registry"}
# checks that go down with a component: the registry keeps its schemas in PostgreSQL
ALSO_DOWN = {"postgres": {"schema_registry"}}


async def stack(*args: str) -> None:
    if "DRIFTLINE_STATE_DIR" not in os.environ:
        pytest.skip("needs the test stack's DRIFTLINE_STATE_DIR (run with make test-integration)")
    # in a thread: the load goes on while the script stops or starts the component
    await asyncio.to_thread(
        subprocess.run, [str(ROOT / "infra" / "stack.sh"), *args], check=True, capture_output=True, timeout=180
    )


@pytest.fixture
def services(namespace: Namespace) -> Iterator[dict[str, ServiceProcess]]:
    procs = {
        name: ServiceProcess(f"driftline_{name}", namespace).start(f"DRIFTLINE_{name.upper()}_")
        for name in ("ingestion", "features", "training")
    }
    try:
        yield procs
    finally:
        for svc in procs.values():
            svc.stop()


class Feed:
    """Loan applications posted over HTTP, 20 every 0.2 s, each batch until it is accepted."""

    def __init__(self, ingestion: ServiceProcess) -> None:
        self.ingestion = ingestion
        self.stream = LoanStream(seed=5, start=datetime.now(UTC) - timedelta(hours=2))
        self.accepted: set[str] = set()
        self.stopping = asyncio.Event()

    async def run(self) -> None:
        async with Publisher.http(self.ingestion.url, LOCAL_API_TOKEN, source="outage-test", max_retries=3) as pub:
            while not self.stopping.is_set():
                items = list(self.stream.take(20))
                while True:  # the same events, the same ids, until accepted
                    with contextlib.suppress(PublishError):
                        result = await pub.publish([it.event for it in items])
                        assert not result.rejected, result.errors
                        if result.accepted + result.duplicates == len(items):
                            break
                    await asyncio.sleep(0.5)
                self.accepted.update(it.event_id for it in items)
                await asyncio.sleep(0.2)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Feed]:
        task = asyncio.create_task(self.run())
        try:
            yield self
        finally:
            self.stopping.set()
            await asyncio.wait_for(task, timeout=120)


async def readiness(svc: ServiceProcess) -> tuple[int, dict[str, Any]]:
    async with httpx.AsyncClient(timeout=10) as client:
        r = await client.get(f"{svc.url}/readyz")
        return r.status_code, r.json()


@pytest.mark.parametrize("component", list(COMPONENTS))
async def test_readiness_follows_an_outage_under_load_and_nothing_is_lost_or_doubled(
    component: str, namespace: Namespace, services: dict[str, ServiceProcess]
) -> None:
    training = services["training"]
    check = COMPONENTS[component]
    await asyncio.gather(*(svc.wait_ready(timeout_s=120) for svc in services.values()))
    status, body = await readiness(training)
    assert status == 200 and body["checks"][check] == "ok", body

    feed = Feed(services["ingestion"])
    async with feed.running():
        await eventually(lambda: _at_least(feed, 100), timeout_s=30)
        await outage(component, check, training)
        target = len(feed.accepted) + 100  # accepted again after the outage
        await eventually(lambda: _at_least(feed, target), timeout_s=90)
    assert training.proc is not None and training.proc.poll() is None

    conn = await asyncpg.connect(namespace.stack.postgres_dsn.get_secret_value())
    try:

        async def every_event_once() -> None:
            vectors = dict(await conn.fetch("SELECT source_event_id, count(*) FROM features.vectors GROUP BY 1"))
            examples = {r[0] for r in await conn.fetch("SELECT source_event_id FROM training.vectors")}
            assert feed.accepted - vectors.keys() == set(), f"{len(feed.accepted - vectors.keys())} without a vector"
            assert feed.accepted - examples == set(), f"{len(feed.accepted - examples)} not in training's table"
            doubled = {k: n for k, n in vectors.items() if n > 1}
            assert not doubled, f"{len(doubled)} events with more than one vector"

        await eventually(every_event_once, timeout_s=90, interval_s=1)
    finally:
        await conn.close()


async def _at_least(feed: Feed, n: int) -> None:
    assert len(feed.accepted) >= n, f"{len(feed.accepted)} of {n} events accepted"


async def outage(component: str, check: str, training: ServiceProcess) -> None:
    """Stop the component, see training's readiness name it (and only it), start it again, see
    training ready and serving again in the same process."""
    await stack("stop", component)
    try:

        async def not_ready() -> None:
            status, body = await readiness(training)
            assert status == 503 and body["ready"] is False, body
            assert body["checks"][check].startswith("failed"), body

        await eventually(not_ready, timeout_s=15, interval_s=0.5)
        # The other dependencies are still reported up: readiness names what is down.
        _, body = await readiness(training)
        others = set(COMPONENTS.values()) - {check} - ALSO_DOWN.get(component, set())
        assert all(body["checks"][name] == "ok" for name in others), body
    finally:
        await stack("start", component)

    async def ready() -> None:
        status, body = await readiness(training)
        assert status == 200 and body["ready"] is True, body

    await eventually(ready, timeout_s=60, interval_s=0.5)
    # The same process serves again: runs come from PostgreSQL, and the process never exited.
    async with httpx.AsyncClient(timeout=10) as client:
        r = await client.get(f"{training.url}/v1/runs", headers=AUTH)
    assert r.status_code == 200, r.text
    assert training.proc is not None and training.proc.poll() is None
