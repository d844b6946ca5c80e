"""Benchmark of POST /v1/predict against a bare FastAPI app serving the same model.

Both run as separate uvicorn processes on this host and are driven by the same httpx client with
the same payloads, in alternating rounds, in the same run:

* the deployment service (``python -m driftline_deployment``) in a fresh test namespace, its
  model loaded the real way: put in the object store and announced on ``models.promoted``;
* a bare FastAPI app whose one route turns the JSON into a row and calls the same model's
  ``predict_proba`` (the baseline: what any Python model server pays at least).

Prints p50/p99 latency and requests/s of each, and the ratios service/baseline. Run against a
running stack, e.g. ``DRIFTLINE_STATE_DIR=.state/test .venv/bin/python bench/predict.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, Response

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def bare_app(model_file: str, positive: str) -> Any:
    """The baseline: parse, build the row, predict_proba, answer."""
    import numpy as np
    import orjson

    from driftline_ml.models import load_model
    from tests.unit.deployment.synthetic import FEATURES

    model = load_model(Path(model_file).read_bytes())
    classes = [str(c) for c in model.classes_]
    pos = classes.index(positive)
    app = FastAPI()

    @app.post("/v1/predict")
    async def predict(request: Request) -> Response:
        # The least a Python model server does: orjson in and out, no response model, no encoder.
        body = orjson.loads(await request.body())
        rows = body["instances"] if "instances" in body else [body["features"]]
        x = np.asarray([[row[f] for f in FEATURES] for row in rows], dtype=np.float64)
        scores = model.predict_proba(x)[:, pos]
        answer = {
            "predictions": [
                {"score": float(s), "predicted_class": positive if s >= 0.5 else classes[1 - pos]} for s in scores
            ]
        }
        return Response(orjson.dumps(answer), media_type="application/json")

    return app


def run_bare(model_file: str, port: int) -> None:
    import uvicorn

    uvicorn.run(bare_app(model_file, "approve"), host="127.0.0.1", port=port, log_level="warning", access_log=False)


async def wait_http(url: str, timeout_s: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient() as client:
        while True:
            try:
                if (await client.get(url, timeout=2)).status_code < 500:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} not up in {timeout_s}s")
            await asyncio.sleep(0.3)


async def drive(client: Any, url: str, payloads: list[dict[str, Any]], concurrency: int) -> tuple[list[float], float]:
    """Send every payload once with ``concurrency`` requests in flight; latencies (s) and wall time."""
    latencies: list[float] = []
    queue = iter(payloads)

    async def worker() -> None:
        for payload in queue:
            start = time.perf_counter()
            r = await client.post(url, json=payload)
            latencies.append(time.perf_counter() - start)
            if r.status_code != 200:
                raise RuntimeError(f"{url} answered {r.status_code}: {r.text[:300]}")

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, time.perf_counter() - start


def summary(latencies: list[float], wall: float) -> dict[str, float]:
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    return {"p50_ms": q[49] * 1000, "p99_ms": q[98] * 1000, "rps": len(latencies) / wall}


async def main(args: argparse.Namespace) -> None:
    import httpx

    from driftline.artifacts import ArtifactStore
    from driftline.catalog import MODELS_PROMOTED
    from driftline.producer import EventProducer
    from driftline.serde import AvroSerde, SchemaRegistryClient
    from driftline.settings import StackSettings
    from tests.support import ServiceProcess, create_namespace, drop_namespace, free_port
    from tests.unit.deployment import synthetic

    base = StackSettings()
    ns = await create_namespace(base, label="bench")
    service: ServiceProcess | None = None
    bare: subprocess.Popen[bytes] | None = None
    tmp = tempfile.NamedTemporaryFile(suffix=".skops", delete=False)  # noqa: SIM115 - removed in finally
    try:
        print(f"training the model (HistGradientBoosting, max_iter={args.max_iter}) …", flush=True)
        model = synthetic.train(seed=1, n=3000, max_iter=args.max_iter)
        tmp.write(model.artifact)
        tmp.close()

        registry = SchemaRegistryClient.from_settings(ns.stack)
        producer = EventProducer(ns.stack.kafka, AvroSerde(registry, topic_prefix=ns.prefix), "bench")
        await producer.start([MODELS_PROMOTED])
        await synthetic.publish_promotion(producer, ArtifactStore.from_settings(ns.stack), model, 1)
        await producer.stop()
        await registry.close()

        service = ServiceProcess("driftline_deployment", ns).start("DRIFTLINE_DEPLOYMENT_")
        bare_port = free_port()
        bare = subprocess.Popen(  # noqa: ASYNC220 - started once, before any measurement
            [sys.executable, __file__, "--serve-bare", tmp.name, "--port", str(bare_port)],
            cwd=ROOT,
            # The same OpenMP setting as the service (DRIFTLINE_DEPLOYMENT_MODEL_THREADS, default 1).
            env={"OMP_NUM_THREADS": "1", **os.environ, "PYTHONPATH": str(ROOT)},
        )
        await service.wait_ready()
        await wait_http(f"http://127.0.0.1:{bare_port}/docs")

        rows = synthetic.generate(args.requests * args.batch, seed=5)[0]
        if args.batch == 1:
            payloads = [{"features": r} for r in rows]
        else:
            payloads = [{"instances": rows[i : i + args.batch]} for i in range(0, len(rows), args.batch)]
        targets = {
            "deployment": f"{service.url}/v1/predict",
            "bare FastAPI": f"http://127.0.0.1:{bare_port}/v1/predict",
        }
        limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
        async with httpx.AsyncClient(timeout=30, limits=limits) as client:

            async def model_loaded() -> None:
                deadline = time.monotonic() + 60
                while (await client.post(targets["deployment"], json=payloads[0])).status_code != 200:
                    if time.monotonic() > deadline:
                        raise RuntimeError("the deployment service did not load the model")
                    await asyncio.sleep(0.3)

            await model_loaded()
            for url in targets.values():  # warm-up: connections, caches, first calls
                await drive(client, url, payloads[: min(200, len(payloads))], args.concurrency)
            results: dict[str, tuple[list[float], float]] = {name: ([], 0.0) for name in targets}
            chunk = max(1, len(payloads) // args.rounds)
            for r in range(args.rounds):  # alternate so both see the same machine conditions
                part = payloads[r * chunk : (r + 1) * chunk]
                order = list(targets.items()) if r % 2 == 0 else list(reversed(targets.items()))
                for name, url in order:
                    lat, wall = await drive(client, url, part, args.concurrency)
                    results[name] = (results[name][0] + lat, results[name][1] + wall)

        figures = {name: summary(lat, wall) for name, (lat, wall) in results.items()}
        svc, raw = figures["deployment"], figures["bare FastAPI"]
        print(
            f"\nPOST /v1/predict, {args.batch} vector(s) per request, {len(results['deployment'][0])} requests per "
            f"target, concurrency {args.concurrency}, {args.rounds} alternating rounds, same client and host"
        )
        print(f"{'':14} {'p50 ms':>9} {'p99 ms':>9} {'req/s':>9}")
        for name, f in figures.items():
            print(f"{name:14} {f['p50_ms']:9.2f} {f['p99_ms']:9.2f} {f['rps']:9.0f}")
        print(
            f"{'ratio':14} {svc['p50_ms'] / raw['p50_ms']:9.2f} {svc['p99_ms'] / raw['p99_ms']:9.2f} "
            f"{svc['rps'] / raw['rps']:9.2f}   (deployment / bare; latency: lower is better, req/s: higher)"
        )
    finally:
        if bare is not None:
            bare.terminate()
            bare.wait(30)
        if service is not None:
            service.stop()
        os.unlink(tmp.name)
        await drop_namespace(ns, base)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000, help="requests per target")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--batch", type=int, default=1, help="feature vectors per request")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--max-iter", type=int, default=150, help="boosting iterations (the example uses 150)")
    parser.add_argument("--serve-bare", metavar="MODEL_FILE", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    cli = parser.parse_args()
    if cli.serve_bare:
        run_bare(cli.serve_bare, cli.port)
    else:
        asyncio.run(main(cli))
