"""Shadow verdicts on the real stack: deployment scores the stream with the champion and, in
shadow, the challenger; monitoring joins both with the labels, and its comparison (GET
/v1/models/{name}/comparison, ``driftline models compare``) matches a hand computation on the
predictions read from ``predictions`` and the labels sent."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from driftline.artifacts import ArtifactStore
from driftline.catalog import DEPLOYMENTS_STATUS, FEATURES_VECTORS, LABELS, MODELS_PROMOTED, PREDICTIONS
from driftline.producer import EventProducer
from driftline.serde import AvroSerde, SchemaRegistryClient
from tests.support import ROOT, Namespace, ServiceProcess, TopicReader, eventually
from tests.unit.deployment import synthetic
from tests.unit.deployment.synthetic import MODEL_NAME

N = 160


@pytest.fixture
async def producer(namespace: Namespace) -> AsyncIterator[EventProducer]:
    registry = SchemaRegistryClient(namespace.stack.schema_registry_url)
    p = EventProducer(namespace.stack.kafka, AvroSerde(registry, topic_prefix=namespace.prefix), "t")
    await p.start([MODELS_PROMOTED, FEATURES_VECTORS, LABELS])
    yield p
    await p.stop()
    await registry.close()


async def test_the_shadow_comparison_matches_a_hand_computation(namespace: Namespace, producer: EventProducer) -> None:
    reader = await TopicReader(namespace, [DEPLOYMENTS_STATUS, PREDICTIONS]).start()
    deployment = ServiceProcess("driftline_deployment", namespace).start("DRIFTLINE_DEPLOYMENT_")
    monitoring = ServiceProcess("driftline_monitoring", namespace).start("DRIFTLINE_MONITORING_")
    store = ArtifactStore.from_settings(namespace.stack)
    try:
        await deployment.wait_ready()
        await monitoring.wait_ready()
        # The champion knows concept a; the challenger was trained on concept b, the labels' concept.
        await synthetic.publish_promotion(producer, store, synthetic.train(seed=1, n=1200, max_iter=20), 1)
        challenger = synthetic.train(seed=2, n=1200, max_iter=20, concept="b")
        await synthetic.publish_promotion(producer, store, challenger, 2, action="shadow")
        await reader.wait_for(
            lambda evs: any(
                e.topic == DEPLOYMENTS_STATUS and e.value["slot"] == "challenger" and e.value["status"] == "loaded"
                for e in evs
            ),
            timeout_s=90,
            what="the challenger loaded",
        )
        rows, labels = synthetic.generate(N, seed=8, concept="b")
        vectors = [synthetic.vector(row, i) for i, row in enumerate(rows)]
        await producer.publish_many([(FEATURES_VECTORS, v) for v in vectors])

        def made(evs: list[Any], slot: str) -> dict[str, str]:
            return {
                e.value["source_event_id"]: e.value["predicted_class"]
                for e in evs
                if e.topic == PREDICTIONS and e.value["slot"] == slot
            }

        await reader.wait_for(
            lambda evs: len(made(evs, "champion")) >= N and len(made(evs, "challenger")) >= N,
            timeout_s=60,
            what="both models' predictions of every vector",
        )
        champion, shadow = made(reader.events, "champion"), made(reader.events, "challenger")
        await producer.publish_many([(LABELS, synthetic.label(v, y)) for v, y in zip(vectors, labels, strict=True)])

        # By hand, from what the topics carry.
        truth = {v["source_event_id"]: y for v, y in zip(vectors, labels, strict=True)}
        a = sum(champion[s] == y and shadow[s] == y for s, y in truth.items())
        b = sum(champion[s] == y and shadow[s] != y for s, y in truth.items())
        c = sum(champion[s] != y and shadow[s] == y for s, y in truth.items())
        d = N - a - b - c
        diff = (c - b) / N
        half = 1.959963984540054 * math.sqrt(b + c - (c - b) ** 2 / N) / N
        p_value = sum(math.comb(b + c, k) for k in range(c, b + c + 1)) / 2 ** (b + c)
        assert c > b  # the labels follow the challenger's concept

        async def compared() -> dict[str, Any]:
            async with httpx.AsyncClient(timeout=30) as http:
                r = await http.get(f"{monitoring.url}/v1/models/{MODEL_NAME}/comparison")
            assert r.status_code == 200, r.text
            rows = r.json()["comparisons"]
            assert rows and rows[0]["labelled_pairs"] == N, r.text
            row: dict[str, Any] = rows[0]
            return row

        got = await eventually(compared, timeout_s=60)
        assert (got["champion_version"], got["challenger_version"]) == (1, 2)
        assert (got["both_right"], got["champion_only_right"], got["challenger_only_right"], got["both_wrong"]) == (
            a,
            b,
            c,
            d,
        )
        assert got["champion_accuracy"] == pytest.approx((a + b) / N)
        assert got["challenger_accuracy"] == pytest.approx((a + c) / N)
        assert got["difference"] == pytest.approx(diff)
        assert got["interval"] == pytest.approx([diff - half, diff + half])
        assert got["p_value"] == pytest.approx(p_value)
        assert got["verdict"] == ("challenger_better" if diff - half > 0 else "no_difference")

        # The CLI prints the same comparison.
        cli = subprocess.run(
            [sys.executable, "-m", "driftline_cli.main", "models", "compare", MODEL_NAME, "--json"],
            env={**os.environ, "DRIFTLINE_MONITORING_URL": monitoring.url},
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
        )
        assert cli.returncode == 0, cli.stderr
        assert json.loads(cli.stdout)["comparisons"][0]["challenger_only_right"] == c
    finally:
        monitoring.stop()
        deployment.stop()
        await reader.stop()


async def test_the_registry_promotes_a_challenger_on_a_decisive_shadow_verdict(
    namespace: Namespace, producer: EventProducer
) -> None:
    from driftline.catalog import MODELS_COMPARED, MODELS_TRAINED
    from driftline.settings import LOCAL_API_TOKEN
    from tests.integration.test_registry import trained_record

    await producer.stop()  # this test also sends models.trained
    registry_client = SchemaRegistryClient(namespace.stack.schema_registry_url)
    producer = EventProducer(namespace.stack.kafka, AvroSerde(registry_client, topic_prefix=namespace.prefix), "t")
    await producer.start([MODELS_TRAINED, FEATURES_VECTORS, LABELS])
    reader = await TopicReader(namespace, [MODELS_PROMOTED, MODELS_COMPARED, DEPLOYMENTS_STATUS]).start()
    services = [
        ServiceProcess(m, namespace).start(f"DRIFTLINE_{m.removeprefix('driftline_').upper()}_")
        for m in ("driftline_registry", "driftline_deployment", "driftline_monitoring")
    ]
    registry = services[0]
    store = ArtifactStore.from_settings(namespace.stack)
    try:
        for svc in services:
            await svc.wait_ready(timeout_s=90)
        champion = synthetic.train(seed=1, n=1200, max_iter=20)
        challenger = synthetic.train(seed=2, n=1200, max_iter=20, concept="b")
        for model, accuracy in ((champion, 0.9), (challenger, 0.5)):  # v1 promoted, v2 rejected (floor 0.65)
            refs = await synthetic.store_model(store, model)
            record = {**trained_record(accuracy), **refs, "run_id": model.run_id, "feature_names": synthetic.FEATURES}
            await producer.publish(MODELS_TRAINED, record)
            if model is champion:  # registered (and promoted) first: it is v1
                await reader.wait_for(
                    lambda evs, run_id=model.run_id: any(e.value.get("run_id") == run_id for e in evs),
                    timeout_s=60,
                    what="v1 promoted",
                )

        async with httpx.AsyncClient(timeout=30) as http:

            async def versions() -> None:
                r = await http.get(f"{registry.url}/v1/models/{MODEL_NAME}/versions")
                assert len(r.json()["versions"]) == 2, r.text

            await eventually(versions, timeout_s=60)
            r = await http.post(
                f"{registry.url}/v1/models/{MODEL_NAME}/versions/2/shadow",
                headers={"Authorization": f"Bearer {LOCAL_API_TOKEN}"},
                json={"reason": "try concept b in shadow"},
            )
            assert r.status_code in (200, 202), r.text
        await reader.wait_for(
            lambda evs: any(
                e.topic == DEPLOYMENTS_STATUS and e.value["slot"] == "challenger" and e.value["status"] == "loaded"
                for e in evs
            ),
            timeout_s=90,
            what="the challenger loaded",
        )
        n = 260  # above the default shadow_min_pairs (200)
        rows, labels = synthetic.generate(n, seed=9, concept="b")
        vectors = [synthetic.vector(row, i) for i, row in enumerate(rows)]
        await producer.publish_many([(FEATURES_VECTORS, v) for v in vectors])
        await producer.publish_many([(LABELS, synthetic.label(v, y)) for v, y in zip(vectors, labels, strict=True)])

        evs = await reader.wait_for(
            lambda evs: any(
                e.topic == MODELS_PROMOTED and e.value["version"] == 2 and e.value["action"] == "promote" for e in evs
            ),
            timeout_s=120,
            what="v2 promoted on the shadow verdict",
        )
        (verdict,) = [e.value for e in evs if e.topic == MODELS_COMPARED]
        (promoted,) = [
            e.value
            for e in evs
            if e.topic == MODELS_PROMOTED and e.value["version"] == 2 and e.value["action"] == "promote"
        ]
        assert verdict["verdict"] == "challenger_better" and verdict["labelled_pairs"] >= 200
        assert (verdict["champion_version"], verdict["challenger_version"]) == (1, 2)
        assert verdict["interval_low"] > 0 and verdict["confidence"] == 0.95
        assert promoted["actor"] == "policy:shadow" and promoted["causation_id"] == verdict["event_id"]
        assert promoted["previous_version"] == 1 and "shadow verdict" in promoted["reason"]
        await reader.wait_for(
            lambda evs: any(
                e.topic == DEPLOYMENTS_STATUS
                and e.value["slot"] == "champion"
                and e.value["version"] == 2
                and e.value["status"] == "loaded"
                for e in evs
            ),
            timeout_s=90,
            what="v2 serving as champion",
        )
    finally:
        for svc in reversed(services):
            svc.stop()
        await reader.stop()
        await producer.stop()
        await registry_client.close()
