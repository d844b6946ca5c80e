"""Training and registry together on the real stack: first model, a worse one, drift and a better
one, rollback, and a champion whose artifact was tampered with."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from driftline.artifacts import ArtifactIntegrityError, ArtifactStore
from driftline.catalog import (
    DRIFT_DETECTED,
    MODELS_PROMOTED,
    MODELS_REJECTED,
    MODELS_TRAINED,
    TRAINING_FAILED,
    TRAINING_REQUESTED,
)
from driftline.events import Event
from driftline.producer import EventProducer
from driftline.project import load_project
from tests.integration.test_training import (
    AUTH,
    PROJECT,
    drift_record,
    feed,
    loan_rows,
    request_run,
    wait_examples,
    wait_result,
)
from tests.integration.test_training import producer as producer
from tests.support import Namespace, ServiceProcess, TopicReader, eventually

MODEL = PROJECT.model.name


@pytest.fixture
async def services(namespace: Namespace) -> AsyncIterator[tuple[ServiceProcess, ServiceProcess]]:
    training = ServiceProcess("driftline_training", namespace).start("DRIFTLINE_TRAINING_")
    registry = ServiceProcess("driftline_registry", namespace).start("DRIFTLINE_REGISTRY_")
    try:
        await training.wait_ready(timeout_s=120)
        await registry.wait_ready(timeout_s=120)
        yield training, registry
    finally:
        training.stop()
        registry.stop()


async def decision_for(reader: TopicReader, run_id: str) -> Event:
    def find() -> Event | None:
        for e in reader.events:
            if e.topic in (MODELS_PROMOTED, MODELS_REJECTED) and e.value["run_id"] == run_id:
                return e
        return None

    await reader.wait_for(lambda _: find() is not None, timeout_s=60, what=f"registry decision on {run_id}")
    event = find()
    assert event is not None
    return event


async def wait_champion(client: httpx.AsyncClient, url: str, version: int) -> None:
    """Training has taken in the champion announced on models.promoted."""

    async def check() -> None:
        champions = (await client.get(f"{url}/v1/champions")).json()["champions"]
        assert [(c["model_name"], c["version"]) for c in champions] == [(MODEL, version)], champions

    await eventually(check, timeout_s=60)


async def test_training_and_registry_close_the_loop(
    namespace: Namespace, producer: EventProducer, services: tuple[ServiceProcess, ServiceProcess]
) -> None:
    training, registry = services
    topics = [TRAINING_REQUESTED, MODELS_TRAINED, TRAINING_FAILED, MODELS_PROMOTED, MODELS_REJECTED]
    reader = await TopicReader(namespace, topics).start()
    store = ArtifactStore.from_settings(namespace.stack)
    start = datetime.now(UTC) - timedelta(hours=4)
    before = loan_rows(600, start=start, seed=11)
    onset = start + timedelta(seconds=600)
    after = loan_rows(600, start=onset, seed=12, inverted=True)
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            t, r = training.url, registry.url
            await feed(producer, before)
            await wait_examples(client, t, 600)

            # 1. The first model passes the floor and is promoted.
            # Without refit, so that v1's training data ends before the holdout (step 2 is scored on the
            # examples after it).
            first = await request_run(client, t, parameters={"refit": "false"})
            trained_1 = await wait_result(reader, first["run_id"])
            assert trained_1.topic == MODELS_TRAINED, trained_1.value
            promoted_1 = await decision_for(reader, first["run_id"])
            assert promoted_1.topic == MODELS_PROMOTED
            assert (promoted_1.value["version"], promoted_1.value["previous_version"]) == (1, None)
            assert promoted_1.correlation_id == first["correlation_id"]
            await wait_champion(client, t, 1)

            # 2. A worse candidate (fit on the oldest 10%) is compared with v1 on its holdout and rejected.
            worse = await request_run(
                client, t, parameters={"min_examples": 20, "holdout_fraction": 0.9, "selection": "recent"}
            )
            trained_2 = await wait_result(reader, worse["run_id"])
            assert trained_2.topic == MODELS_TRAINED, trained_2.value
            assert trained_2.value["champion_version"] == 1
            # v1 trained on the oldest 450 examples: both are scored on the 150 after those only.
            assert (trained_2.value["n_holdout"], trained_2.value["n_comparison"]) == (540, 150)
            champion_accuracy = trained_2.value["champion_metrics"]["accuracy"]
            candidate_accuracy = trained_2.value["comparison_metrics"]["accuracy"]
            assert candidate_accuracy < champion_accuracy
            rejected_2 = await decision_for(reader, worse["run_id"])
            assert rejected_2.topic == MODELS_REJECTED
            r2 = rejected_2.value
            assert (r2["version"], r2["candidate_value"], r2["champion_value"]) == (
                2,
                candidate_accuracy,
                champion_accuracy,
            )

            # 3. The concept drifts; a drift event makes training retrain on what came after the
            #    onset, and the new model beats v1 on that holdout: promoted, one chain throughout.
            await feed(producer, after)
            await wait_examples(client, t, 1200)
            drift = drift_record(episode_id="episode-1", window_start=onset)
            await producer.publish(DRIFT_DETECTED, drift)
            await reader.wait_for(
                lambda evs: any(e.topic == MODELS_PROMOTED and e.correlation_id == drift["event_id"] for e in evs),
                timeout_s=240,
                what="promotion after drift",
            )
            chain = [e for e in reader.events if e.correlation_id == drift["event_id"]]
            assert [e.topic for e in chain] == [TRAINING_REQUESTED, MODELS_TRAINED, MODELS_PROMOTED]
            request, trained_3, promoted_3 = chain
            assert request.value["causation_id"] == drift["event_id"]
            assert trained_3.value["causation_id"] == request.event_id
            assert promoted_3.value["causation_id"] == trained_3.event_id
            assert trained_3.value["n_train"] + trained_3.value["n_holdout"] == 600
            assert trained_3.value["champion_version"] == 1
            # All of its holdout comes after v1's data; a drift run compares on the most recent part.
            recent = load_project().promotion.compare_recent
            assert trained_3.value["n_comparison"] == max(50, math.ceil(recent * trained_3.value["n_holdout"]))
            assert trained_3.value["metrics"]["accuracy"] > 0.85 > trained_3.value["champion_metrics"]["accuracy"]
            p3 = promoted_3.value
            assert (p3["version"], p3["previous_version"], p3["drift_episode_id"]) == (3, 1, "episode-1")
            lineage = (await client.get(f"{r}/v1/models/{MODEL}/versions/3")).json()["lineage"]
            assert lineage["drift_episode_id"] == "episode-1" and lineage["trigger"] == "drift"
            assert lineage["correlation_id"] == drift["event_id"]
            await wait_champion(client, t, 3)

            # 4. Rollback: models.promoted for the previous version; training follows.
            resp = await client.post(f"{r}/v1/models/{MODEL}/rollback", headers=AUTH, json={"reason": "test"})
            assert resp.status_code == 200, resp.text
            assert (resp.json()["version"], resp.json()["action"]) == (1, "rollback")
            await wait_champion(client, t, 1)

            # 5. The champion's artifact is tampered with: the digest check refuses it, the run says
            #    so, and the registry will not promote without a comparison on the same holdout.
            v1 = promoted_1.value
            await store.put(v1["artifact_key"], await store.get(trained_3.value["artifact_key"], p3["artifact_sha256"]))
            with pytest.raises(ArtifactIntegrityError):
                await store.get(v1["artifact_key"], v1["artifact_sha256"])
            after_tamper = await request_run(
                client, t, since=onset.isoformat(), parameters={"selection": "since_drift"}
            )
            trained_4 = await wait_result(reader, after_tamper["run_id"])
            assert trained_4.topic == MODELS_TRAINED, trained_4.value
            assert trained_4.value["champion_version"] is None and trained_4.value["champion_metrics"] is None
            assert trained_4.value["metrics"]["accuracy"] > 0.85
            metadata: dict[str, Any] = await store.get_json(
                trained_4.value["metadata_key"], trained_4.value["metadata_sha256"]
            )
            assert "SHA-256" in metadata["champion_evaluation_error"]
            rejected_4 = await decision_for(reader, after_tamper["run_id"])
            assert rejected_4.topic == MODELS_REJECTED
            assert "no comparison on the same holdout" in rejected_4.value["reason"]

            history = (await client.get(f"{r}/v1/models/{MODEL}/history")).json()["history"]
            assert [(h["action"], h["version"]) for h in reversed(history) if h["action"] != "registered"] == [
                ("promote", 1),
                ("reject", 2),
                ("promote", 3),
                ("rollback", 1),
                ("reject", 4),
            ]
    finally:
        await reader.stop()
