"""Outages of the real stack's components: readiness says so within seconds, and comes back.

Each test stops one component of the test stack with the project's own script
(``infra/stack.sh stop COMPONENT``), watches a running training service's ``/readyz`` (training
uses all four: the broker, the schema registry, PostgreSQL and the object store), starts the
component again (``infra/stack.sh start COMPONENT``) and checks that the service is ready again
and still answers an API call that needs the component, without a restart of the service.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from driftline.settings import LOCAL_API_TOKEN
from tests.support import Namespace, ServiceProcess, eventually

ROOT = Path(__file__).resolve().parents[2]
AUTH = {"Authorization": f"Bearer {LOCAL_API_TOKEN}"}

# component of infra/stack.sh -> the name of its /readyz check
COMPONENTS = {"kafka": "kafka", "postgres": "postgres", "minio": "object_store", "apicurio": "schema_registry"}
# checks that go down with a component: the registry keeps its schemas in PostgreSQL
ALSO_DOWN = {"postgres": {"schema_registry"}}


def stack(*args: str) -> None:
    if "DRIFTLINE_STATE_DIR" not in os.environ:
        pytest.skip("needs the test stack's DRIFTLINE_STATE_DIR (run with make test-integration)")
    subprocess.run([str(ROOT / "infra" / "stack.sh"), *args], check=True, capture_output=True, timeout=180)


@pytest.fixture
def training(namespace: Namespace) -> Iterator[ServiceProcess]:
    svc = ServiceProcess("driftline_training", namespace).start("DRIFTLINE_TRAINING_")
    try:
        yield svc
    finally:
        svc.stop()


async def readiness(svc: ServiceProcess) -> tuple[int, dict[str, Any]]:
    async with httpx.AsyncClient(timeout=10) as client:
        r = await client.get(f"{svc.url}/readyz")
        return r.status_code, r.json()


@pytest.mark.parametrize("component", list(COMPONENTS))
async def test_readiness_follows_an_outage_of(component: str, training: ServiceProcess) -> None:
    check = COMPONENTS[component]
    await training.wait_ready(timeout_s=90)
    status, body = await readiness(training)
    assert status == 200 and body["checks"][check] == "ok", body

    stack("stop", component)
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
        stack("start", component)

    async def ready() -> None:
        status, body = await readiness(training)
        assert status == 200 and body["ready"] is True, body

    await eventually(ready, timeout_s=60, interval_s=0.5)
    # The same process serves again: runs come from PostgreSQL, and the process never exited.
    async with httpx.AsyncClient(timeout=10) as client:
        r = await client.get(f"{training.url}/v1/runs", headers=AUTH)
    assert r.status_code == 200, r.text
    assert training.proc is not None and training.proc.poll() is None
