"""The deployment service on the real stack: promotions swap the served model without a failed
request, a tampered artifact is refused while the old model keeps serving, a restart rebuilds
the cache from models.promoted, and the stream of feature vectors is scored (the challenger in
shadow)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import cache
from typing import Any

import httpx
import numpy as np
import pytest

from driftline.artifacts import ArtifactStore, sha256_hex
from driftline.catalog import DEPLOYMENTS_STATUS, EVENTS_DLQ, FEATURES_VECTORS, MODELS_PROMOTED, PREDICTIONS
from driftline.events import Event, derived_event_id
from driftline.producer import EventProducer
from driftline.serde import AvroSerde, SchemaRegistryClient
from driftline_ml.models import positive_scores, to_matrix
from tests.support import Namespace, ServiceProcess, TopicReader, eventually
from tests.unit.deployment import synthetic
from tests.unit.deployment.synthetic import FEATURES, MODEL_NAME, TrainedModel


@cache
def model(seed: int) -> TrainedModel:
    return synthetic.train(seed=seed, n=1600, max_iter=30)


@cache
def large_model(seed: int) -> TrainedModel:
    """300 trees (the example's model has 150): loading it takes about half a second of CPU."""
    return synthetic.train(seed=seed, n=3000, max_iter=300)


@dataclass
class Clients:
    registry: SchemaRegistryClient
    producer: EventProducer
    store: ArtifactStore


@pytest.fixture
async def clients(namespace: Namespace) -> AsyncIterator[Clients]:
    registry = SchemaRegistryClient.from_settings(namespace.stack)
    producer = EventProducer(namespace.stack.kafka, AvroSerde(registry, topic_prefix=namespace.prefix), "test")
    await producer.start([MODELS_PROMOTED, FEATURES_VECTORS])
    yield Clients(registry, producer, ArtifactStore.from_settings(namespace.stack))
    await producer.stop()
    await registry.close()


def start_deployment(ns: Namespace, **env: str) -> ServiceProcess:
    extra = {f"DRIFTLINE_DEPLOYMENT_{k.upper()}": v for k, v in env.items()}
    return ServiceProcess("driftline_deployment", ns, env=extra).start("DRIFTLINE_DEPLOYMENT_")


def statuses(reader: TopicReader, **match: Any) -> list[dict[str, Any]]:
    return [e.value for e in reader.on(DEPLOYMENTS_STATUS) if all(e.value[k] == v for k, v in match.items())]


async def wait_status(reader: TopicReader, timeout_s: float = 60, **match: Any) -> dict[str, Any]:
    await reader.wait_for(lambda _: bool(statuses(reader, **match)), timeout_s=timeout_s, what=f"status {match}")
    return statuses(reader, **match)[-1]


def rows(n: int, seed: int = 99) -> list[dict[str, float]]:
    return synthetic.generate(n, seed)[0]


async def predict(client: httpx.AsyncClient, url: str, batch: list[dict[str, float]]) -> httpx.Response:
    return await client.post(f"{url}/v1/predict", json={"instances": batch})


async def test_a_promotion_swaps_the_model_with_no_failed_request_in_flight(
    namespace: Namespace, clients: Clients
) -> None:
    status_reader = await TopicReader(namespace, [DEPLOYMENTS_STATUS]).start()
    svc = start_deployment(namespace)
    try:
        await svc.wait_ready()
        async with httpx.AsyncClient(timeout=30) as http:
            r = await predict(http, svc.url, rows(1))
            assert r.status_code == 503, r.text  # nothing promoted yet
            assert r.json()["detail"]["error"] == "no_model"

            v1_model, v2_model = large_model(1), large_model(2)
            v1 = await synthetic.publish_promotion(clients.producer, clients.store, v1_model, 1)
            loaded = await wait_status(status_reader, version=1, status="loaded")
            assert loaded["causation_id"] == v1["event_id"]
            assert loaded["correlation_id"] == v1["correlation_id"]
            assert loaded["slot"] == "champion" and loaded["load_seconds"] > 0

            # Requests keep flowing from several clients while v2 is promoted, loaded and swapped in.
            batch = rows(8)
            results: list[tuple[int, float, float, int, int | None]] = []  # worker, start, end, status, version
            stop = asyncio.Event()

            async def worker(i: int) -> None:
                while not stop.is_set():
                    start = time.monotonic()
                    try:
                        resp = await predict(http, svc.url, batch)
                        version = resp.json().get("model_version") if resp.status_code == 200 else None
                        results.append((i, start, time.monotonic(), resp.status_code, version))
                    except httpx.HTTPError:
                        results.append((i, start, time.monotonic(), -1, None))
                    await asyncio.sleep(0.005)  # busy, not saturated: a CPU-bound client would measure itself

            workers = [asyncio.create_task(worker(i)) for i in range(4)]
            await asyncio.sleep(3.0)  # the first second warms up, the next two are the steady state
            promoted_at = time.monotonic()
            await synthetic.publish_promotion(clients.producer, clients.store, v2_model, 2, action="promote")

            async def serving_v2() -> None:
                assert any(v == 2 for *_, v in results)

            await eventually(serving_v2, timeout_s=60)
            await asyncio.sleep(0.5)
            stop.set()
            await asyncio.gather(*workers)

        failed = [r for r in results if r[3] != 200]
        assert not failed, f"{len(failed)} of {len(results)} requests failed during the swap: {failed[:5]}"
        first_v2 = min(start for _, start, _, _, v in results if v == 2)
        during_swap = [r for r in results if r[1] >= promoted_at and r[2] <= first_v2]
        assert during_swap, "no request ran between the promotion and the swap"
        assert all(r[4] == 1 for r in during_swap)  # served by the old model while the new one loaded
        for i in range(4):  # each client sees v1 then v2, never back
            versions = [v for w, _, _, _, v in sorted(results, key=lambda r: r[1]) if w == i]
            assert versions == sorted(versions) and versions[-1] == 2
        # Nor did any wait: the slowest request answered by v1 after the promotion (in flight while v2
        # was fetched, loaded and swapped in) against the steady state of the same run (same host,
        # same model size). Loading in a thread of the service, requests queued for the GIL behind
        # the skops load: the slowest took 10-15 times the steady p99; from a child process, 1-3 times.
        t0 = min(r[1] for r in results)
        steady = sorted(end - start for _, start, end, _, _ in results if start >= t0 + 1.0 and end < promoted_at)
        in_flight = sorted(end - start for _, start, end, _, v in results if end >= promoted_at and v == 1)
        p99 = steady[int(0.99 * (len(steady) - 1))]
        print(
            f"\nswap: {len(results)} requests, {len(during_swap)} ran while v2 was loading, 0 failed; "
            f"steady p50 {steady[len(steady) // 2] * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms; "
            f"in flight during the swap ({len(in_flight)}): slowest {in_flight[-1] * 1000:.1f} ms; "
            f"promotion to first v2 answer {first_v2 - promoted_at:.2f} s"
        )
        assert len(steady) >= 100 and len(in_flight) >= 10
        # A request that waited behind the load takes about as long as the load itself (the time
        # from the promotion to the first v2 answer); a scheduling stall of the 2 shared cores can
        # take one request past 5 p99 (a fresh-clone run: 454 ms against a p99 of 40 ms and a
        # 1.19 s swap), so only a request beyond both bounds has waited for the load.
        swap_s = first_v2 - promoted_at
        assert in_flight[-1] <= max(5 * p99, 0.5 * swap_s), (
            f"a request waited {in_flight[-1]:.3f} s during the swap (p99 {p99:.3f} s, swap {swap_s:.2f} s)"
        )

        v2_loaded = await wait_status(status_reader, version=2, status="loaded")
        assert v2_loaded["reason"].startswith("promote v2")
        async with httpx.AsyncClient(timeout=30) as http:
            info = (await http.get(f"{svc.url}/v1/deployment")).json()
        champion = info["models"][MODEL_NAME]["champion"]
        assert champion["version"] == 2 and champion["why"]["action"] == "promote"
        assert champion["artifact_sha256"] == sha256_hex(large_model(2).artifact)
    finally:
        svc.stop()
        await status_reader.stop()


async def test_a_tampered_artifact_is_refused_and_the_old_model_keeps_serving_even_after_a_restart(
    namespace: Namespace, clients: Clients
) -> None:
    status_reader = await TopicReader(namespace, [DEPLOYMENTS_STATUS]).start()
    await synthetic.publish_promotion(clients.producer, clients.store, model(1), 1)
    svc = start_deployment(namespace)
    try:
        await svc.wait_ready()
        # Rebuilt at start-up from the replayed promotion.
        loaded = await wait_status(status_reader, version=1, status="loaded")
        assert "start-up" in loaded["reason"]
        v2 = await synthetic.publish_promotion(clients.producer, clients.store, model(2), 2, tamper=True)
        failed = await wait_status(status_reader, version=2, status="failed")
        assert "SHA-256" in failed["reason"] and failed["causation_id"] == v2["event_id"]
        batch = rows(5)
        async with httpx.AsyncClient(timeout=30) as http:
            r = await predict(http, svc.url, batch)
            assert r.status_code == 200 and r.json()["model_version"] == 1
            expected = model(1).scores(batch)
            np.testing.assert_allclose([p["score"] for p in r.json()["predictions"]], expected)
            info = (await http.get(f"{svc.url}/v1/deployment")).json()
            assert info["models"][MODEL_NAME]["champion"]["version"] == 1
            assert info["recent"][0]["status"] == "failed" and info["recent"][0]["version"] == 2
    finally:
        svc.stop()

    # A new instance replays models.promoted: the latest champion (v2) fails again, v1 serves.
    restarted = start_deployment(namespace)
    try:
        await restarted.wait_ready()
        async with httpx.AsyncClient(timeout=30) as http:
            r = await predict(http, restarted.url, rows(1))
            assert r.status_code == 200 and r.json()["model_version"] == 1
        await status_reader.wait_for(
            lambda _: (
                len(statuses(status_reader, version=2, status="failed")) == 2
                and len(statuses(status_reader, version=1, status="loaded")) == 2
            ),
            what="the restarted instance refusing v2 and loading v1",
        )
    finally:
        restarted.stop()
        await status_reader.stop()


async def test_vectors_are_scored_and_the_challenger_only_in_shadow(namespace: Namespace, clients: Clients) -> None:
    reader = await TopicReader(namespace, [DEPLOYMENTS_STATUS, PREDICTIONS, EVENTS_DLQ]).start()
    svc = start_deployment(namespace)
    try:
        await svc.wait_ready()
        await synthetic.publish_promotion(clients.producer, clients.store, model(1), 1)
        await wait_status(reader, version=1, status="loaded")
        await synthetic.publish_promotion(clients.producer, clients.store, model(2), 2, action="shadow")
        await wait_status(reader, version=2, status="loaded", slot="challenger")

        data = rows(40, seed=7)
        vectors = [synthetic.vector(row, i) for i, row in enumerate(data)]
        poison = synthetic.vector({**data[0], "salary": "a lot"}, 999)  # type: ignore[dict-item]
        await clients.producer.publish_many([(FEATURES_VECTORS, v) for v in [*vectors[:20], poison, *vectors[20:]]])

        def made(events: list[Event], slot: str) -> list[dict[str, Any]]:
            return [e.value for e in events if e.topic == PREDICTIONS and e.value["slot"] == slot]

        await reader.wait_for(
            lambda evs: (
                len(made(evs, "champion")) >= 40 and len(made(evs, "challenger")) >= 40 and reader.on(EVENTS_DLQ)
            ),
            timeout_s=60,
            what="champion and shadow predictions and the dead letter",
        )
        champion, shadow = made(reader.events, "champion"), made(reader.events, "challenger")
        assert len(champion) == len(shadow) == 40  # the poison vector was not scored
        by_source = {v["source_event_id"]: v for v in vectors}
        expected_v1 = dict(zip([v["source_event_id"] for v in vectors], model(1).scores(data), strict=True))
        for p in champion:
            vec = by_source[p["source_event_id"]]
            assert p["event_id"] == derived_event_id(vec["source_event_id"], MODEL_NAME, 1, "champion")
            assert p["correlation_id"] == vec["correlation_id"] and p["causation_id"] == vec["event_id"]
            assert p["event_time"] == vec["event_time"].replace(
                microsecond=vec["event_time"].microsecond // 1000 * 1000
            )
            assert (p["model_version"], p["shadow"]) == (1, False)
            assert p["score"] == pytest.approx(expected_v1[p["source_event_id"]])
            assert p["predicted_class"] == ("approve" if p["score"] >= 0.5 else "deny")
            assert p["scoring_latency_ms"] >= 0
        assert {(p["model_version"], p["shadow"]) for p in shadow} == {(2, True)}
        (dead,) = reader.on(EVENTS_DLQ)
        assert "salary" in dead.value["reason"] and dead.value["original_topic"].endswith(FEATURES_VECTORS)

        async with httpx.AsyncClient(timeout=30) as http:
            r = await predict(http, svc.url, data[:3])
            assert r.json()["model_version"] == 1  # callers never get the challenger's answer
            info = (await http.get(f"{svc.url}/v1/deployment")).json()["models"][MODEL_NAME]
            assert info["challenger"]["version"] == 2 and info["challenger"]["why"]["action"] == "shadow"

            # The challenger is promoted: it leaves the challenger slot. Then a rollback to v1.
            await synthetic.publish_promotion(clients.producer, clients.store, model(2), 2)
            await wait_status(reader, version=2, status="loaded", slot="champion")
            info = (await http.get(f"{svc.url}/v1/deployment")).json()["models"][MODEL_NAME]
            assert info["champion"]["version"] == 2 and info["challenger"] is None
            await synthetic.publish_promotion(clients.producer, clients.store, model(1), 1, action="rollback")
            rolled = await wait_status(reader, version=1, status="rolled_back")
            assert rolled["slot"] == "champion"
            r = await predict(http, svc.url, data[:1])
            assert r.json()["model_version"] == 1

            # Another version becomes champion: the challenger it supersedes stops shadowing.
            await synthetic.publish_promotion(clients.producer, clients.store, model(3), 3, action="shadow")
            await wait_status(reader, version=3, status="loaded", slot="challenger")
            await synthetic.publish_promotion(clients.producer, clients.store, model(4), 4)
            unloaded = await wait_status(reader, version=3, status="unloaded", slot="challenger")
            assert "superseded" in unloaded["reason"]
            info = (await http.get(f"{svc.url}/v1/deployment")).json()["models"][MODEL_NAME]
            assert info["champion"]["version"] == 4 and info["challenger"] is None
            before = len(made(reader.events, "challenger"))
            more = [synthetic.vector(row, 100 + i) for i, row in enumerate(rows(10, seed=8))]
            await clients.producer.publish_many([(FEATURES_VECTORS, v) for v in more])
            await reader.wait_for(
                lambda evs: sum(p["model_version"] == 4 for p in made(evs, "champion")) >= 10,
                timeout_s=60,
                what="v4's predictions",
            )
            assert len(made(reader.events, "challenger")) == before
    finally:
        svc.stop()
        await reader.stop()


async def test_bad_predict_requests_are_refused_with_a_4xx(namespace: Namespace, clients: Clients) -> None:
    await synthetic.publish_promotion(clients.producer, clients.store, model(1), 1)
    svc = start_deployment(namespace, max_batch="10")
    try:
        await svc.wait_ready()
        good = rows(1)[0]
        async with httpx.AsyncClient(timeout=30) as http:

            async def ok() -> None:
                r = await http.post(f"{svc.url}/v1/predict", json={"features": good})
                assert r.status_code == 200, r.text

            await eventually(ok)
            r = await http.post(f"{svc.url}/v1/predict", json={"features": good})
            body = r.json()
            assert body["model_name"] == MODEL_NAME and body["model_version"] == 1
            assert len(body["predictions"]) == 1

            cases: list[tuple[dict[str, Any], int, str]] = [
                ({"features": {**good, "colour": 1.0}}, 422, "colour"),
                ({"features": {k: v for k, v in good.items() if k != "age"}}, 422, "age"),
                ({"features": {**good, "age": "forty"}}, 422, "age"),
                ({"features": {**good, "age": True}}, 422, "age"),
                ({"features": good, "instances": [good]}, 422, "exactly one"),
                ({}, 422, "exactly one"),
                ({"instances": []}, 422, "instances"),
                ({"instances": [good] * 11}, 413, "at most 10"),
            ]
            for payload, code, word in cases:
                r = await http.post(f"{svc.url}/v1/predict", json=payload)
                assert r.status_code == code, (payload.keys(), r.text)
                assert word in r.text, r.text
            # An explicit null is a missing value, which the model handles.
            r = await http.post(f"{svc.url}/v1/predict", json={"features": {**good, "age": None}})
            assert r.status_code == 200
            expected = positive_scores(model(1).estimator, to_matrix([{**good, "age": None}], FEATURES), "approve")
            assert r.json()["predictions"][0]["score"] == pytest.approx(float(expected[0]))
    finally:
        svc.stop()
