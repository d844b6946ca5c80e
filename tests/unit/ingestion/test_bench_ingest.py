"""bench/ingest.py's HTTP path: a batch answered 503 (backpressure) counts until it is finally stored."""

from __future__ import annotations

import asyncio
import importlib.util
from functools import partial
from types import ModuleType
from typing import Any

import httpx
import pytest

from driftline.settings import repo_root


def _bench() -> ModuleType:
    root = repo_root()
    assert root is not None
    spec = importlib.util.spec_from_file_location("bench_ingest", root / "bench" / "ingest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_backpressure_waits_count_in_the_latency_and_the_503s_are_reported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bench = _bench()
    posts = 0

    async def service(request: httpx.Request) -> httpx.Response:
        nonlocal posts
        if request.method == "GET":
            return httpx.Response(200, json={"status": "ok"})
        posts += 1
        await asyncio.sleep(0.01)
        if posts <= 2:  # the first batch is refused twice before it is stored
            return httpx.Response(503, headers={"Retry-After": "0.15"}, json={"error": "overloaded"})
        return httpx.Response(200, json={"accepted": 1})

    monkeypatch.setattr(bench.httpx, "AsyncClient", partial(httpx.AsyncClient, transport=httpx.MockTransport(service)))
    events: list[dict[str, Any]] = [{"type": "loan_application", "payload": {}} for _ in range(3)]
    elapsed, latencies, overloaded = await bench.path_c("http://bench", events, batch=1, concurrency=1)
    assert overloaded == 2 and len(latencies) == 3
    first, *rest = latencies
    assert first >= 0.3  # two Retry-After waits and three attempts, not the last attempt alone
    assert all(t < 0.15 for t in rest)
    assert elapsed >= sum(latencies) * 0.99
