"""The monitoring service on the real stack: a stationary stream raises no drift; a covariate
shift raises exactly one drift.detected naming the shifted feature (also across a restart of the
service); a promotion that deployment refuses leaves it open, a new champion seen serving closes
it; a label-driven accuracy drop is detected."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

import httpx
import pytest

from driftline.artifacts import ArtifactStore
from driftline.catalog import (
    DEPLOYMENTS_STATUS,
    DRIFT_DETECTED,
    FEATURES_VECTORS,
    LABELS,
    MODELS_PROMOTED,
    MODELS_REJECTED,
    PREDICTIONS,
)
from driftline.events import envelope
from driftline.producer import EventProducer
from driftline.project import load_project
from driftline.records import DeploymentStatusChanged, DriftDetected, ModelRejected
from driftline.serde import AvroSerde, SchemaRegistryClient
from tests.support import Namespace, ServiceProcess, TopicReader, eventually
from tests.unit.deployment import synthetic
from tests.unit.deployment.synthetic import MODEL_NAME, T0, TrainedModel

POLICY = load_project().drift


@cache
def model(seed: int) -> TrainedModel:
    return synthetic.train(seed=seed, n=3000, max_iter=40)


@dataclass
class World:
    ns: Namespace
    producer: EventProducer
    store: ArtifactStore
    drift: TopicReader
    sent: int = 0

    async def send(self, m: TrainedModel, rows: list[dict[str, float]], labels: list[str], version: int = 1) -> None:
        """Vectors, the champion's predictions and the labels, in chunks as they would flow."""
        scores = m.scores(rows)
        for lo in range(0, len(rows), 100):
            batch: list[tuple[str, dict[str, Any]]] = []
            for i in range(lo, min(lo + 100, len(rows))):
                vec = synthetic.vector(rows[i], self.sent + i)
                batch += [
                    (FEATURES_VECTORS, vec),
                    (PREDICTIONS, synthetic.prediction(vec, float(scores[i]), version)),
                    (LABELS, synthetic.label(vec, labels[i])),
                ]
            await self.producer.publish_many(batch)
        self.sent += len(rows)

    async def deployment_status(self, promotion: dict[str, Any], status: str) -> None:
        """What a deployment instance reports about a promotion, as deployment would."""
        record = DeploymentStatusChanged(
            **envelope("test-deployment", cause=promotion),
            model_name=promotion["model_name"],
            version=promotion["version"],
            slot="champion",
            status=status,
            reason=f"test: {status}",
            instance_id="test-deployment-1",
            load_seconds=None,
        )
        await self.producer.publish(DEPLOYMENTS_STATUS, record)


@pytest.fixture
async def world(namespace: Namespace) -> AsyncIterator[World]:
    registry = SchemaRegistryClient.from_settings(namespace.stack)
    producer = EventProducer(namespace.stack.kafka, AvroSerde(registry, topic_prefix=namespace.prefix), "test")
    await producer.start([MODELS_PROMOTED, FEATURES_VECTORS, PREDICTIONS, LABELS, DEPLOYMENTS_STATUS, MODELS_REJECTED])
    drift = await TopicReader(namespace, [DRIFT_DETECTED]).start()
    yield World(namespace, producer, ArtifactStore.from_settings(namespace.stack), drift)
    await drift.stop()
    await producer.stop()
    await registry.close()


def start_monitoring(ns: Namespace) -> ServiceProcess:
    return ServiceProcess("driftline_monitoring", ns).start("DRIFTLINE_MONITORING_")


async def drift_state(svc: ServiceProcess) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=30) as http:
        r = await http.get(f"{svc.url}/v1/drift")
        assert r.status_code == 200, r.text
        models = r.json()["models"]
        assert models, "no model monitored yet"
        state: dict[str, Any] = models[0]
        return state


async def processed(svc: ServiceProcess, vectors: int, labelled: int, version: int = 1) -> dict[str, Any]:
    """Wait until the service has consumed this many vectors and joined this many labels."""

    async def check() -> dict[str, Any]:
        state = await drift_state(svc)
        assert state["model_version"] == version
        assert state["records_seen"] >= vectors, state["records_seen"]
        assert state["performance"]["labelled_total"] >= labelled, state["performance"]["labelled_total"]
        return state

    result: dict[str, Any] = await eventually(check, timeout_s=180, interval_s=1)
    return result


def records_after(when: datetime, start_index: int) -> int:
    """Records of the stream between the shift (record ``start_index``) and event time ``when``."""
    return int((when - T0).total_seconds()) - start_index + 1


async def test_a_stationary_stream_raises_no_drift(world: World) -> None:
    await synthetic.publish_promotion(world.producer, world.store, model(1), 1)
    svc = start_monitoring(world.ns)
    try:
        await svc.wait_ready()
        rows, labels = synthetic.generate(3000, seed=101)
        await world.send(model(1), rows, labels)
        state = await processed(svc, 3000, 3000)
        await world.drift.poll(1.0)
        assert world.drift.on(DRIFT_DETECTED) == []
        check = state["last_check"]
        assert set(check["features"]) == set(synthetic.FEATURES)
        assert all(not f["drifted"] for f in check["features"].values())
        assert max(f["psi"] for f in check["features"].values()) < POLICY.psi_threshold
        assert check["drift"] is None and state["episode"] is None
        assert state["performance"]["accuracy"] > 0.85
        async with httpx.AsyncClient(timeout=30) as http:
            assert (await http.get(f"{svc.url}/v1/reports")).json()["reports"] == []
            page = await http.get(f"{svc.url}/")
            assert page.status_code == 200 and "<svg" in page.text and "salary" in page.text
    finally:
        svc.stop()


async def test_a_shift_raises_one_drift_event_naming_the_feature_and_its_episode_spans_models(world: World) -> None:
    promoted = await synthetic.publish_promotion(world.producer, world.store, model(1), 1)
    svc = start_monitoring(world.ns)
    try:
        await svc.wait_ready()
        await world.send(model(1), *synthetic.generate(1500, seed=201))
        await processed(svc, 1500, 1500)
        await world.drift.poll(1.0)
        assert world.drift.on(DRIFT_DETECTED) == []

        await world.send(model(1), *synthetic.generate(1500, seed=202, salary_scale=1.6))
        await world.drift.wait_for(lambda evs: len(evs) >= 1, timeout_s=120, what="drift.detected")
        await processed(svc, 3000, 3000)
    finally:
        svc.stop()

    # A restart in the middle of the episode: the episode is restored, the drift goes on, no new event.
    svc = start_monitoring(world.ns)
    try:
        await svc.wait_ready()
        await world.send(model(1), *synthetic.generate(900, seed=203, salary_scale=1.6))
        await processed(svc, 900, 900)
        await world.drift.poll(2.0)
        # One detection for the episode, across the restart; its only further requests, if any, are
        # consolidations as the post-drift labelled set grows (the accuracy holds).
        drift, *further = world.drift.on(DRIFT_DETECTED)
        assert {e.record.reason for e in further} <= {"consolidation"}
        d: DriftDetected = drift.record
        assert d.attempt == 1 and d.kind == "input" and "salary" in d.features
        assert {"age", "car", "elevel", "zipcode", "loan", "hyears", "hvalue"}.isdisjoint(d.features)
        assert d.correlation_id == d.event_id and d.causation_id is None
        assert (d.model_name, d.model_version) == (MODEL_NAME, 1)
        assert d.statistic > d.threshold and d.window_size == POLICY.window
        assert d.window_start < d.window_end
        assert any(e.feature == "salary" and e.drifted for e in d.evidence)
        delay = records_after(d.window_end, 1500)
        assert 0 < delay <= POLICY.window
        print(f"\ncovariate shift (salary x1.6) detected about {delay} records after it started")

        state = await drift_state(svc)
        assert state["episode"]["episode_id"] == d.episode_id
        async with httpx.AsyncClient(timeout=30) as http:
            (report,) = (await http.get(f"{svc.url}/v1/reports", params={"model": MODEL_NAME})).json()["reports"]
            assert report["episode_id"] == d.episode_id and report["resolved_at"] is None
            assert report["published_at"] is not None and "salary" in report["features"]

            # A promotion deployment refuses (say, a tampered artifact): v1 serves on, so its
            # predictions still count and the episode stays open.
            v2 = await synthetic.publish_promotion(world.producer, world.store, model(2), 2)
            await world.deployment_status(v2, "failed")
            await world.send(model(1), *synthetic.generate(200, seed=204, salary_scale=1.6))
            state = await processed(svc, 1100, 1100, version=1)
            assert state["episode"]["episode_id"] == d.episode_id
            (r,) = (await http.get(f"{svc.url}/v1/reports")).json()["reports"]
            assert r["resolved_at"] is None

            # v2 is then deployed (its predictions arrive): the windows start again against its
            # reference, and the episode goes on with it (episodes span models) ...
            await world.send(model(2), *synthetic.generate(50, seed=205), version=2)

            async def inherited() -> None:
                (r,) = (await http.get(f"{svc.url}/v1/reports")).json()["reports"]
                assert r["resolved_at"] is None
                state = await drift_state(svc)
                assert state["model_version"] == 2 and state["episode"]["episode_id"] == d.episode_id

            await eventually(inherited, timeout_s=60)

            # ... until served performance is back: v2 on normal data, its accuracy known and within
            # the guard of its reference, no drift for resolve_after checks in a row.
            await world.send(model(2), *synthetic.generate(900, seed=206), version=2)

            async def back() -> None:
                (r,) = (await http.get(f"{svc.url}/v1/reports")).json()["reports"]
                assert r["resolution"] == "back_to_normal"
                assert (await drift_state(svc))["episode"] is None

            await eventually(back, timeout_s=90)
        assert promoted["model_name"] == MODEL_NAME
    finally:
        svc.stop()


async def test_a_label_driven_accuracy_drop_is_detected(world: World) -> None:
    await synthetic.publish_promotion(world.producer, world.store, model(1), 1)
    svc = start_monitoring(world.ns)
    try:
        await svc.wait_ready()
        await world.send(model(1), *synthetic.generate(1200, seed=301))
        await processed(svc, 1200, 1200)
        await world.drift.poll(1.0)
        assert world.drift.on(DRIFT_DETECTED) == []
        # Same inputs, new labelling: only the labels tell.
        rows, labels = synthetic.generate(1500, seed=302, concept="b")
        await world.send(model(1), rows[:600], labels[:600])
        await world.drift.wait_for(lambda evs: len(evs) >= 1, timeout_s=120, what="drift.detected")
        # The registry rejects the first attempt's candidate (no training runs here): the episode
        # may ask again, as served accuracy stays down.
        (first,) = world.drift.on(DRIFT_DETECTED)
        await world.producer.publish(
            MODELS_REJECTED,
            ModelRejected(
                **envelope("registry", correlation_id=first.record.correlation_id),
                model_name=MODEL_NAME,
                version=2,
                run_id="run-1",
                reason="not better than the champion",
                metric="accuracy",
                candidate_value=0.5,
                margin=0.0,
                floor=0.6,
            ),
        )
        await world.send(model(1), rows[600:], labels[600:])
        state = await processed(svc, 2700, 2700)
        asked = state["episode"]["attempts"]  # every one of them is on the topic (stored, then published)
        await world.drift.wait_for(
            lambda evs: sum(e.topic == DRIFT_DETECTED for e in evs) >= asked,
            timeout_s=60,
            what=f"{asked} drift.detected",
        )
        drift, *further = world.drift.on(DRIFT_DETECTED)
        d: DriftDetected = drift.record
        assert d.attempt == 1 and d.reason == "detected"
        assert d.kind == "performance" and d.method in ("accuracy_drop", "page_hinkley", "adwin")
        assert d.features == () and d.statistic > d.threshold
        assert {e.method for e in d.evidence} == {"accuracy_drop", "page_hinkley", "adwin"}
        assert state["performance"]["accuracy"] < model(1).accuracy - POLICY.accuracy_drop
        delay = records_after(d.window_end, 1200)
        assert 0 < delay <= 1500
        print(f"\naccuracy drop detected about {delay} labelled predictions after the concept changed ({d.method})")
        # Served accuracy stays down, so once its first candidate was rejected the open episode asks
        # again in its chain as labels arrive, each attempt stored before it is published.
        attempts: list[DriftDetected] = [e.record for e in further]
        assert attempts and [a.attempt for a in attempts] == list(range(2, len(attempts) + 2))
        assert {(a.episode_id, a.reason, a.correlation_id) for a in attempts} == {
            (d.episode_id, "still_degraded", d.event_id)
        }
        assert asked == 1 + len(attempts)
        async with httpx.AsyncClient(timeout=30) as http:
            (report,) = (await http.get(f"{svc.url}/v1/reports")).json()["reports"]
        assert [a["attempt"] for a in report["attempts"]] == [a.attempt for a in attempts]
        assert all(a["published_at"] is not None for a in report["attempts"])
    finally:
        svc.stop()
