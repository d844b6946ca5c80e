"""A producer with only the SDK installed publishes events that reach the platform's topics.

The venv holds libs/driftline and libs/driftline-sdk and their dependencies, nothing of the ML
stack (tests/unit/foundation/test_sdk_package.py checks what it contains); here its python
publishes over HTTP to a real ingestion service, and the events arrive on events.raw.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import pytest

from driftline.catalog import EVENTS_RAW
from tests.sdk_venv import build_sdk_venv, pinned_uv, uv_env
from tests.support import Namespace, ServiceProcess, TopicReader

TOKEN = "sdk-only-secret"
PUBLISH = """
import asyncio, json, sys
from driftline_sdk import Publisher

async def main() -> None:
    url, token, events = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    async with Publisher.http(url, token=token) as pub:
        result = await pub.publish(events)
    print(json.dumps({"accepted": result.accepted, "event_ids": result.event_ids}))

asyncio.run(main())
"""


def loan_event(i: int) -> dict[str, object]:
    payload = {"customer_id": f"sdk-{i}", "salary": 61000 + i, "commission": 0.0, "age": 35, "elevel": 1,
               "car": 4, "zipcode": 2, "hvalue": 210000.0, "hyears": 8, "loan": 150000.0}  # fmt: skip
    return {"type": "loan_application", "event_id": str(uuid.uuid4()), "payload": payload}


async def test_an_sdk_only_venv_publishes_events_to_the_stack(namespace: Namespace, tmp_path: Path) -> None:
    uv = pinned_uv()
    if uv is None:
        pytest.skip("uv is missing: infra/venv.sh --uv could not provide it and none is on PATH")
    python = build_sdk_venv(uv, tmp_path)
    ingestion = ServiceProcess("driftline_ingestion", namespace, env={"DRIFTLINE_API_TOKENS": f"producer={TOKEN}"})
    ingestion.start("DRIFTLINE_INGESTION_")
    reader = await TopicReader(namespace, [EVENTS_RAW]).start()
    try:
        await ingestion.wait_ready(timeout_s=90)
        events = [loan_event(i) for i in range(3)]
        run = subprocess.run(
            [str(python), "-I", "-c", PUBLISH, ingestion.url, TOKEN, json.dumps(events)],
            env=uv_env(),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, f"publishing from the SDK-only venv failed:\n{run.stderr[-3000:]}"
        result = json.loads(run.stdout.strip().splitlines()[-1])
        assert result["accepted"] == 3
        assert result["event_ids"] == [e["event_id"] for e in events]
        await reader.wait_for(lambda evs: len(evs) >= 3, what="3 events on events.raw")
        arrived = reader.on(EVENTS_RAW)
        assert sorted(e.record.event_id for e in arrived) == sorted(str(e["event_id"]) for e in events)
        assert {e.record.payload["customer_id"] for e in arrived} == {"sdk-0", "sdk-1", "sdk-2"}
    finally:
        await reader.stop()
        ingestion.stop()
