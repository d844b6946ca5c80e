"""Benchmark of POST /v1/predict against a bare FastAPI app serving the same model.

They run as separate uvicorn processes on this host and are driven by the same httpx client with
the same rows, at the same concurrency, in alternating rounds, in the same run:

* ``raw event``: the deployment service (``python -m driftline_deployment``, a fresh test
  namespace, the model loaded the real way: object store + ``models.promoted``) answering a raw
  event: validation against the project's payload schema, raw/derived features, the entity's
  window state read from the online store (written by a features service that streamed each
  entity's history first) and folded with the event, score, and the prediction published to
  ``predictions`` (enqueued, delivery tracked);
* ``vector``: the same service answering a ready feature vector (scored and published);
* ``bare FastAPI``: one route that turns the JSON into a row and calls the same model's
  ``predict_proba`` (the baseline: what any Python model server pays at least).

Prints p50/p99 latency and requests/s of each, and the ratios to the baseline. Run against a
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
from datetime import timedelta
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


def loan_payload(row: dict[str, float], entity: str) -> dict[str, Any]:
    """A LoanApplication payload of a synthetic row (its integer fields as integers)."""
    ints = ("age", "elevel", "car", "zipcode", "hyears")
    raw = ("salary", "commission", "age", "elevel", "car", "zipcode", "hvalue", "hyears", "loan")
    return {"customer_id": entity, **{f: int(row[f]) if f in ints else row[f] for f in raw}}


async def ready_store(client: Any, url: str, last_ids: dict[str, str], timeout_s: float = 180) -> None:
    """Wait until the features service stored every entity's history (its latest vector is the
    entity's last event: the window state is written in the same transaction)."""
    deadline = time.monotonic() + timeout_s
    waiting = dict(last_ids)
    while waiting:
        for entity, event_id in list(waiting.items()):
            r = await client.get(f"{url}/v1/features/{entity}")
            if r.status_code == 200 and r.json()["source_event_id"] == event_id:
                del waiting[entity]
        if time.monotonic() > deadline:
            raise RuntimeError(f"the features service did not store the history of {len(waiting)} entities")
        if waiting:
            await asyncio.sleep(0.5)


def summary(latencies: list[float], wall: float) -> dict[str, float]:
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    return {"p50_ms": q[49] * 1000, "p99_ms": q[98] * 1000, "rps": len(latencies) / wall}


async def main(args: argparse.Namespace) -> None:
    import httpx

    from driftline.artifacts import ArtifactStore
    from driftline.catalog import EVENTS_RAW, MODELS_PROMOTED
    from driftline.events import envelope, now_utc
    from driftline.producer import EventProducer
    from driftline.serde import AvroSerde, SchemaRegistryClient
    from driftline.settings import StackSettings
    from tests.support import ServiceProcess, create_namespace, drop_namespace, free_port
    from tests.unit.deployment import synthetic

    base = StackSettings()
    ns = await create_namespace(base, label="bench")
    service: ServiceProcess | None = None
    features: ServiceProcess | None = None
    bare: subprocess.Popen[bytes] | None = None
    tmp = tempfile.NamedTemporaryFile(suffix=".skops", delete=False)  # noqa: SIM115 - removed in finally
    try:
        print(f"training the model (HistGradientBoosting, max_iter={args.max_iter}) …", flush=True)
        model = synthetic.train(seed=1, n=3000, max_iter=args.max_iter)
        tmp.write(model.artifact)
        tmp.close()

        registry = SchemaRegistryClient.from_settings(ns.stack)
        producer = EventProducer(ns.stack.kafka, AvroSerde(registry, topic_prefix=ns.prefix), "bench")
        await producer.start([MODELS_PROMOTED, EVENTS_RAW])
        await synthetic.publish_promotion(producer, ArtifactStore.from_settings(ns.stack), model, 1)

        features = ServiceProcess("driftline_features", ns).start("DRIFTLINE_FEATURES_")
        service = ServiceProcess("driftline_deployment", ns).start("DRIFTLINE_DEPLOYMENT_")
        bare_port = free_port()
        bare = subprocess.Popen(  # noqa: ASYNC220 - started once, before any measurement
            [sys.executable, __file__, "--serve-bare", tmp.name, "--port", str(bare_port)],
            cwd=ROOT,
            # The same OpenMP setting as the service (DRIFTLINE_DEPLOYMENT_MODEL_THREADS, default 1).
            env={"OMP_NUM_THREADS": "1", **os.environ, "PYTHONPATH": str(ROOT)},
        )
        await service.wait_ready()
        await features.wait_ready(timeout_s=90)
        await wait_http(f"http://127.0.0.1:{bare_port}/docs")

        # Each entity's history through the stream, so the online store holds its window state.
        n = args.requests * args.batch
        rows = synthetic.generate(n, seed=5)[0]
        entities = [f"b-{i % args.entities}" for i in range(n)]
        start_time = now_utc() - timedelta(minutes=30)
        history = synthetic.generate(args.entities * args.history, seed=6)[0]
        last_ids: dict[str, str] = {}
        for i, row in enumerate(history):
            entity = f"b-{i % args.entities}"
            env = envelope("bench", event_time=start_time + timedelta(seconds=i))
            last_ids[entity] = env["event_id"]
            await producer.send(EVENTS_RAW, {
                **env,
                "event_type": "loan_application", "entity_id": entity, "payload": loan_payload(row, entity),
                "project": "loan-approval",
            })  # fmt: skip
        await producer.flush()
        await producer.stop()
        await registry.close()
        print(f"streamed {len(history)} history events of {args.entities} entities …", flush=True)

        def event(row: dict[str, float], entity: str) -> dict[str, Any]:
            return {"type": "loan_application", "payload": loan_payload(row, entity)}

        def batched(items: list[Any], key: str, one: str) -> list[dict[str, Any]]:
            if args.batch == 1:
                return [{one: item} for item in items]
            return [{key: items[i : i + args.batch]} for i in range(0, len(items), args.batch)]

        raw_payloads = batched([event(r, e) for r, e in zip(rows, entities, strict=True)], "events", "event")
        vector_payloads = batched(rows, "instances", "features")
        targets = {
            "raw event": (f"{service.url}/v1/predict", raw_payloads),
            "vector": (f"{service.url}/v1/predict", vector_payloads),
            "bare FastAPI": (f"http://127.0.0.1:{bare_port}/v1/predict", vector_payloads),
        }
        limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
        async with httpx.AsyncClient(timeout=30, limits=limits) as client:

            async def ready(url: str, payload: dict[str, Any], what: str) -> None:
                deadline = time.monotonic() + 90
                while (await client.post(url, json=payload)).status_code != 200:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"the deployment service did not {what}")
                    await asyncio.sleep(0.3)

            await ready(targets["vector"][0], vector_payloads[0], "load the model")
            await ready_store(client, features.url, last_ids)
            for url, payloads in targets.values():  # warm-up: connections, caches, first calls
                await drive(client, url, payloads[: min(200, len(payloads))], args.concurrency)
            results: dict[str, tuple[list[float], float]] = {name: ([], 0.0) for name in targets}
            chunk = max(1, len(vector_payloads) // args.rounds)
            for r in range(args.rounds):  # alternate so all see the same machine conditions
                order = list(targets.items()) if r % 2 == 0 else list(reversed(targets.items()))
                for name, (url, payloads) in order:
                    lat, wall = await drive(client, url, payloads[r * chunk : (r + 1) * chunk], args.concurrency)
                    results[name] = (results[name][0] + lat, results[name][1] + wall)

        figures = {name: summary(lat, wall) for name, (lat, wall) in results.items()}
        bare_f = figures["bare FastAPI"]
        print(
            f"\nPOST /v1/predict, {args.batch} event(s)/vector(s) per request, {len(results['raw event'][0])} requests "
            f"per target, concurrency {args.concurrency}, {args.rounds} alternating rounds, same client and host"
        )
        print(f"{'':14} {'p50 ms':>9} {'p99 ms':>9} {'req/s':>9} {'p50 x':>7} {'p99 x':>7} {'req/s x':>8}")
        for name, f in figures.items():
            print(
                f"{name:14} {f['p50_ms']:9.2f} {f['p99_ms']:9.2f} {f['rps']:9.0f} "
                f"{f['p50_ms'] / bare_f['p50_ms']:7.2f} {f['p99_ms'] / bare_f['p99_ms']:7.2f} "
                f"{f['rps'] / bare_f['rps']:8.2f}"
            )
        print("(x: ratio to the bare app; latency: lower is better, req/s: higher)")
    finally:
        if bare is not None:
            bare.terminate()
            bare.wait(30)
        if service is not None:
            service.stop()
        if features is not None:
            features.stop()
        os.unlink(tmp.name)
        await drop_namespace(ns, base)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000, help="requests per target")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--batch", type=int, default=1, help="feature vectors per request")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--entities", type=int, default=500, help="entities of the raw events")
    parser.add_argument("--history", type=int, default=4, help="events per entity streamed before the run")
    parser.add_argument("--max-iter", type=int, default=150, help="boosting iterations (the example uses 150)")
    parser.add_argument("--serve-bare", metavar="MODEL_FILE", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    cli = parser.parse_args()
    if cli.serve_bare:
        run_bare(cli.serve_bare, cli.port)
    else:
        asyncio.run(main(cli))
