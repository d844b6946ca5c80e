"""Canary on the real stack: the registry deploys a version as a canary serving a share of the
entities, deployment serves exactly the entities the split picks with it (the others with the
champion), monitoring compares the two sides on their labelled events, and the policy withdraws a
worse canary and promotes a better one, each decision on ``models.promoted`` caused by the verdict
on ``models.compared`` that carries its evidence.

The champion (v1) knows concept a. Two canaries were trained on concept b: v2 meets labels of
concept a (worse: withdrawn), v3 labels of concept b (better: promoted). The verdict's counts
are checked against a hand computation from the predictions read from ``predictions`` and the
labels sent.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from statistics import NormalDist
from typing import Any

import httpx
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from driftline.artifacts import ArtifactStore
from driftline.canary import in_canary
from driftline.catalog import (
    DEPLOYMENTS_STATUS,
    FEATURES_VECTORS,
    LABELS,
    MODELS_COMPARED,
    MODELS_PROMOTED,
    MODELS_REJECTED,
    MODELS_TRAINED,
    PREDICTIONS,
)
from driftline.producer import EventProducer
from driftline.serde import AvroSerde, SchemaRegistryClient
from driftline.settings import LOCAL_API_TOKEN
from tests.integration.test_registry import trained_record
from tests.support import ROOT, Namespace, ServiceProcess, TopicReader, eventually
from tests.unit.deployment import synthetic
from tests.unit.deployment.synthetic import MODEL_NAME

FRACTION = 0.5
N = 640  # about 320 labelled events per side: above the default canary_min_labels (200)
Z = NormalDist().inv_cdf(0.975)  # the default canary_confidence, 0.95


@pytest.fixture
async def producer(namespace: Namespace) -> AsyncIterator[EventProducer]:
    registry = SchemaRegistryClient(namespace.stack.schema_registry_url)
    p = EventProducer(namespace.stack.kafka, AvroSerde(registry, topic_prefix=namespace.prefix), "t")
    await p.start([MODELS_TRAINED, FEATURES_VECTORS, LABELS])
    yield p
    await p.stop()
    await registry.close()


def _by_hand(preds: dict[str, dict[str, Any]], truth: dict[str, str]) -> tuple[tuple[int, int], tuple[int, int]]:
    """Each side's (labelled, right) counts, from the predictions and the labels."""
    arms = {"champion": [0, 0], "canary": [0, 0]}
    for source, y in truth.items():
        p = preds[source]
        arms[p["slot"]][0] += 1
        arms[p["slot"]][1] += p["predicted_class"] == y
    return (arms["champion"][0], arms["champion"][1]), (arms["canary"][0], arms["canary"][1])


async def _consumed(ns: Namespace, reader: TopicReader, service: str, topic: str) -> None:
    """The service's consumer group has committed every record of ``topic`` (the reader reads it)."""
    admin = AIOKafkaAdminClient(**ns.stack.kafka.client_kwargs(), client_id="test-canary")
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(ns.prefix + service)
    finally:
        await admin.close()
    tps = [tp for tp in reader.consumer.assignment() if tp.topic == ns.prefix + topic]
    ends = await reader.consumer.end_offsets(tps)
    behind = {tp.partition: end - (committed[tp].offset if tp in committed else 0) for tp, end in ends.items()}
    assert not any(n > 0 for n in behind.values()), f"{service} is behind on {topic}: {behind}"


def _status(evs: list[Any], slot: str, version: int, status: str) -> bool:
    """Whether deployment reported ``status`` for ``version`` in ``slot``."""
    return any(
        e.topic == DEPLOYMENTS_STATUS
        and (e.value["slot"], e.value["version"], e.value["status"]) == (slot, version, status)
        for e in evs
    )


def _check_arithmetic(v: dict[str, Any], low: float, high: float) -> None:
    """A verdict's accuracies, difference, Wald interval and z-test p-value, by hand from its counts."""
    n1, r1, n2, r2 = v["champion_labelled"], v["champion_right"], v["challenger_labelled"], v["challenger_right"]
    p1, p2 = r1 / n1, r2 / n2
    half = Z * math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
    pooled = (r1 + r2) / (n1 + n2)
    z = (p2 - p1) / math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    assert (v["champion_accuracy"], v["challenger_accuracy"]) == (pytest.approx(p1), pytest.approx(p2))
    assert v["difference"] == pytest.approx(p2 - p1)
    assert (low, high) == (pytest.approx(p2 - p1 - half), pytest.approx(p2 - p1 + half))
    assert v["p_value"] == pytest.approx(1 - NormalDist().cdf(z))
    assert n1 >= 200 and n2 >= 200  # the default canary_min_labels on each side


async def test_the_policy_withdraws_a_worse_canary_and_promotes_a_better_one(
    namespace: Namespace, producer: EventProducer
) -> None:
    reader = await TopicReader(
        namespace, [MODELS_PROMOTED, MODELS_REJECTED, MODELS_COMPARED, DEPLOYMENTS_STATUS, PREDICTIONS]
    ).start()
    services = [
        ServiceProcess(m, namespace).start(f"DRIFTLINE_{m.removeprefix('driftline_').upper()}_")
        for m in ("driftline_registry", "driftline_deployment", "driftline_monitoring")
    ]
    registry, monitoring = services[0], services[2]
    store = ArtifactStore.from_settings(namespace.stack)
    auth = {"Authorization": f"Bearer {LOCAL_API_TOKEN}"}
    try:
        for svc in services:
            await svc.wait_ready(timeout_s=90)
        champion = synthetic.train(seed=1, n=1200, max_iter=20)
        worse = synthetic.train(seed=2, n=1200, max_iter=20, concept="b")
        better = synthetic.train(seed=3, n=1200, max_iter=20, concept="b")
        # v1 promoted by the policy; v2 and v3 below the floor (0.65), so only a canary serves them.
        for model, accuracy, version in ((champion, 0.9, 1), (worse, 0.5, 2), (better, 0.5, 3)):
            refs = await synthetic.store_model(store, model)
            record = {**trained_record(accuracy), **refs, "run_id": model.run_id, "feature_names": synthetic.FEATURES}
            await producer.publish(MODELS_TRAINED, record)
            await reader.wait_for(
                lambda evs, run_id=model.run_id: any(e.value.get("run_id") == run_id for e in evs),
                timeout_s=60,
                what=f"v{version} decided (promoted or rejected)",
            )
        await reader.wait_for(
            lambda evs: _status(evs, "champion", 1, "loaded"),
            timeout_s=90,
            what="v1 serving",
        )

        async def phase(version: int, concept: str, seed: int, start_cli: bool) -> tuple[dict[str, Any], Any]:
            """Deploy ``version`` as the canary, send N vectors of new entities and their labels of
            ``concept``; the verdict and the hand computation."""
            if start_cli:  # the CLI as an operator types it
                cli = subprocess.run(
                    [sys.executable, "-m", "driftline_cli.main", "models", "canary", MODEL_NAME, str(version),
                     "--fraction", str(FRACTION), "--reason", "try concept b on half the entities"],
                    env={**os.environ, "DRIFTLINE_REGISTRY_URL": registry.url},
                    capture_output=True, text=True, cwd=ROOT, timeout=60,
                )  # fmt: skip
                assert cli.returncode == 0, cli.stderr
                assert f"canary: {MODEL_NAME} v{version}" in cli.stdout, cli.stdout
            else:
                async with httpx.AsyncClient(timeout=30) as http:
                    r = await http.post(
                        f"{registry.url}/v1/models/{MODEL_NAME}/versions/{version}/canary",
                        headers=auth,
                        json={"fraction": FRACTION, "reason": "try concept b on half the entities"},
                    )
                assert r.status_code in (200, 202), r.text
                assert r.json()["traffic_fraction"] == FRACTION
            await reader.wait_for(
                lambda evs: _status(evs, "challenger", version, "loaded"),
                timeout_s=90,
                what=f"canary v{version} loaded",
            )
            rows, labels = synthetic.generate(N, seed=seed, concept=concept)
            vectors = [synthetic.vector(row, i, entity=f"v{version}-e{i}") for i, row in enumerate(rows)]
            await producer.publish_many([(FEATURES_VECTORS, v) for v in vectors])
            sources = {v["source_event_id"] for v in vectors}

            def served(evs: list[Any]) -> dict[str, dict[str, Any]]:
                return {
                    e.value["source_event_id"]: e.value
                    for e in evs
                    if e.topic == PREDICTIONS and e.value["source_event_id"] in sources
                }

            evs = await reader.wait_for(lambda evs: len(served(evs)) >= N, timeout_s=60, what="every vector served")
            preds = served(evs)
            # Exactly the entities the split picks are served by the canary, and by it only.
            per_source = [e.value for e in evs if e.topic == PREDICTIONS and e.value["source_event_id"] in sources]
            assert len(per_source) == N, "one served prediction per vector (no shadow scoring beside a canary)"
            for v in vectors:
                p = preds[v["source_event_id"]]
                on_canary = in_canary(MODEL_NAME, v["entity_id"], FRACTION)
                assert (p["slot"], p["model_version"], p["shadow"]) == (
                    ("canary", version, False) if on_canary else ("champion", 1, False)
                ), v["entity_id"]
            # Monitoring counts the predictions it consumes while the canary runs: all of them must be
            # in before the labels can make it decide (one of its consumer's partitions may lag).
            await eventually(lambda: _consumed(namespace, reader, "monitoring", PREDICTIONS), timeout_s=60)
            await producer.publish_many([(LABELS, synthetic.label(v, y)) for v, y in zip(vectors, labels, strict=True)])
            truth = {v["source_event_id"]: y for v, y in zip(vectors, labels, strict=True)}
            evs = await reader.wait_for(
                lambda evs: any(e.topic == MODELS_COMPARED and e.value["challenger_version"] == version for e in evs),
                timeout_s=90,
                what=f"a verdict on canary v{version}",
            )
            (verdict,) = [
                e.value for e in evs if e.topic == MODELS_COMPARED and e.value["challenger_version"] == version
            ]
            _check_arithmetic(verdict, verdict["interval_low"], verdict["interval_high"])
            champion_arm, canary_arm = _by_hand(preds, truth)

            async def every_label_counted() -> dict[str, Any]:
                # The verdict went out once it was decisive; monitoring's comparison goes on counting
                # the labels of the canary's predictions, and ends with the hand computation's counts.
                async with httpx.AsyncClient(timeout=30) as http:
                    r = await http.get(f"{monitoring.url}/v1/models/{MODEL_NAME}/comparison")
                (row,) = [c for c in r.json()["canaries"] if c["challenger_version"] == version]
                assert (row["champion_labelled"], row["champion_right"]) == champion_arm, row
                assert (row["challenger_labelled"], row["challenger_right"]) == canary_arm, row
                return row

            row: dict[str, Any] = await eventually(every_label_counted, timeout_s=60)
            _check_arithmetic(row, *row["interval"])
            assert row["champion_version"] == 1 and row["traffic_fraction"] == FRACTION
            assert verdict["champion_labelled"] <= champion_arm[0] and verdict["challenger_labelled"] <= canary_arm[0]
            return verdict, row

        # -- a worse canary is withdrawn -------------------------------------------------------
        verdict, row = await phase(2, "a", seed=8, start_cli=True)
        assert verdict["mode"] == "canary" and verdict["verdict"] == "champion_better"
        assert verdict["interval_high"] < 0 and verdict["traffic_fraction"] == FRACTION
        assert row["verdict"] == "champion_better" and not row["active"]
        evs = await reader.wait_for(
            lambda evs: any(e.topic == MODELS_PROMOTED and e.value["action"] == "canary_rollback" for e in evs),
            timeout_s=60,
            what="v2 withdrawn",
        )
        (withdrawn,) = [e.value for e in evs if e.topic == MODELS_PROMOTED and e.value["action"] == "canary_rollback"]
        assert (withdrawn["version"], withdrawn["actor"]) == (2, "policy:canary")
        assert withdrawn["causation_id"] == verdict["event_id"] and "champion_better" in withdrawn["reason"]
        await reader.wait_for(
            lambda evs: _status(evs, "challenger", 2, "rolled_back"),
            timeout_s=60,
            what="deployment withdrew canary v2",
        )
        async with httpx.AsyncClient(timeout=30) as http:
            r = await http.get(f"{registry.url}/v1/models/{MODEL_NAME}/versions/2")
            assert r.json()["stage"] == "rolled_back" and not r.json()["is_canary"], r.text
            r = await http.get(f"{registry.url}/v1/models/{MODEL_NAME}")
            assert (r.json()["champion_version"], r.json()["challenger_version"]) == (1, None), r.text

        # -- a better canary is promoted -------------------------------------------------------
        verdict, row = await phase(3, "b", seed=9, start_cli=False)
        assert verdict["mode"] == "canary" and verdict["verdict"] == "challenger_better"
        assert verdict["interval_low"] > 0 and row["verdict"] == "challenger_better"
        evs = await reader.wait_for(
            lambda evs: any(
                e.topic == MODELS_PROMOTED and e.value["action"] == "promote" and e.value["version"] == 3 for e in evs
            ),
            timeout_s=60,
            what="v3 promoted",
        )
        (promoted,) = [
            e.value
            for e in evs
            if e.topic == MODELS_PROMOTED and e.value["action"] == "promote" and e.value["version"] == 3
        ]
        assert promoted["actor"] == "policy:canary" and promoted["causation_id"] == verdict["event_id"]
        assert promoted["previous_version"] == 1 and "challenger_better" in promoted["reason"]

        async def serving_v3() -> None:
            async with httpx.AsyncClient(timeout=30) as http:
                r = await http.get(f"{registry.url}/v1/models/{MODEL_NAME}")
            assert (r.json()["champion_version"], r.json()["challenger_version"]) == (3, None), r.text

        await eventually(serving_v3, timeout_s=30)
        await reader.wait_for(
            lambda evs: _status(evs, "champion", 3, "loaded"),
            timeout_s=90,
            what="v3 serving as champion",
        )
    finally:
        for svc in reversed(services):
            svc.stop()
        await reader.stop()
