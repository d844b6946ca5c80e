"""Serving inside the loop, on the real stack: POST /v1/predict of a raw event computes the vector
the stream computes for it (raw, derived and windowed features from the online store) and the
same score; every HTTP prediction is on ``predictions``, and labels of its prediction id (POST
/v1/labels of ingestion) move the monitor's accuracy."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from sklearn.ensemble import HistGradientBoostingClassifier

from driftline.artifacts import ArtifactStore
from driftline.catalog import EVENTS_RAW, FEATURES_VECTORS, MODELS_PROMOTED, PREDICTIONS
from driftline.events import envelope
from driftline.producer import EventProducer
from driftline.serde import AvroSerde, SchemaRegistryClient
from driftline_ml.models import dump_model, to_matrix
from driftline_ml.profiles import build_profiles
from tests.support import ROOT, Namespace, ServiceProcess, TopicReader, eventually
from tests.unit.deployment import synthetic

MODEL = "serving-test"
# The model reads windowed features too: a skew in them would change its score.
FEATURES = ["salary", "commission", "loan", "income", "loan_to_income", "applications_1h", "loan_mean_1h"]
T0 = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)  # on an hour: one window
TOKEN = {"Authorization": "Bearer driftline-local-token"}


def project_file(tmp_path: Path) -> Path:
    doc = yaml.safe_load((ROOT / "examples/loan_approval/project.yaml").read_text())
    doc["name"] = MODEL
    doc["model"]["name"] = MODEL
    doc["model"]["features"] = FEATURES
    doc["drift"].update({"min_labels": 20, "performance_window": 100, "min_window": 400, "window": 600})
    path = tmp_path / "project.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def trained() -> synthetic.TrainedModel:
    rng = np.random.default_rng(3)
    n = 1500
    salary = rng.uniform(20_000, 150_000, n)
    commission = rng.uniform(0, 20_000, n)
    loan = rng.uniform(0, 500_000, n)
    income = salary + commission
    count = rng.integers(1, 6, n).astype(float)
    mean = rng.uniform(0, 500_000, n)
    approve = (loan < 2.5 * income) & (mean < 300_000) & (count < 4)
    cols = [salary, commission, loan, income, loan / (income + 1), count, mean]
    x = np.column_stack(cols)
    y = np.where(approve, "approve", "deny")
    est = HistGradientBoostingClassifier(max_iter=20, random_state=0).fit(x, y)
    accuracy = float((est.predict(x) == y).mean())
    run_id = str(uuid.uuid4())
    metadata = {
        "run_id": run_id,
        "model_name": MODEL,
        "feature_names": FEATURES,
        "feature_set_version": "1",
        "classes": ["deny", "approve"],
        "positive_class": "approve",
        "metrics": {"accuracy": accuracy},
        "reference_profile": {"features": build_profiles(x, FEATURES, [])},
    }
    return synthetic.TrainedModel(est, dump_model(est), metadata, run_id)


def payload(entity: str, loan: float) -> dict[str, Any]:
    return {
        "customer_id": entity,
        "salary": 60_000.0,
        "commission": 5_000.0,
        "age": 40,
        "elevel": 2,
        "car": 3,
        "zipcode": 4,
        "hvalue": 200_000.0,
        "hyears": 10,
        "loan": loan,
    }


@pytest.fixture
async def producer(namespace: Namespace) -> AsyncIterator[EventProducer]:
    registry = SchemaRegistryClient(namespace.stack.schema_registry_url)
    p = EventProducer(namespace.stack.kafka, AvroSerde(registry, topic_prefix=namespace.prefix), "t")
    await p.start([EVENTS_RAW, MODELS_PROMOTED])
    yield p
    await p.stop()
    await registry.close()


async def promote(producer: EventProducer, ns: Namespace, model: synthetic.TrainedModel) -> None:
    refs = await synthetic.store_model(ArtifactStore.from_settings(ns.stack), model)
    record = {**synthetic.promotion(model, refs, 1), "model_name": MODEL, "feature_names": FEATURES}
    await producer.publish(MODELS_PROMOTED, record)


def start(module: str, ns: Namespace, project: Path) -> ServiceProcess:
    prefix = f"DRIFTLINE_{module.removeprefix('driftline_').upper()}_"
    return ServiceProcess(module, ns, env={"DRIFTLINE_PROJECT_FILE": str(project)}).start(prefix)


async def model_served(http: httpx.AsyncClient, url: str) -> None:
    async def loaded() -> None:
        r = await http.get(f"{url}/v1/deployment")
        assert r.json()["models"].get(MODEL, {}).get("champion"), r.text

    await eventually(loaded, timeout_s=90)


async def test_a_raw_event_gets_the_streams_vector_and_score(
    namespace: Namespace, producer: EventProducer, tmp_path: Path
) -> None:
    project = project_file(tmp_path)
    model = trained()
    reader = await TopicReader(namespace, [FEATURES_VECTORS, PREDICTIONS]).start()
    features = start("driftline_features", namespace, project)
    deployment = start("driftline_deployment", namespace, project)
    try:
        await features.wait_ready(timeout_s=90)
        await deployment.wait_ready(timeout_s=90)
        await promote(producer, namespace, model)
        async with httpx.AsyncClient(timeout=30) as http:
            await model_served(http, deployment.url)
            # The entity's history goes through the stream (events.raw → features → online store).
            history = [(0, 100_000.0), (10, 250_000.0), (20, 40_000.0)]
            sent = []
            for minute, loan in history:
                raw = {
                    **envelope("test", event_time=T0 + timedelta(minutes=minute)),
                    "event_type": "loan_application",
                    "entity_id": "c1",
                    "payload": payload("c1", loan),
                    "project": MODEL,
                }
                sent.append(raw)
                await producer.publish(EVENTS_RAW, raw)

            async def stored() -> None:
                r = await http.get(f"{features.url}/v1/features/c1", params={"project": MODEL})
                assert r.status_code == 200 and r.json()["source_event_id"] == sent[-1]["event_id"], r.text

            await eventually(stored, timeout_s=60)  # the window state is written in the same transaction

            # The next event, over HTTP first: not yet in the entity's windows.
            event_id, event_time = str(uuid.uuid4()), T0 + timedelta(minutes=30)
            event = {
                "type": "loan_application",
                "event_id": event_id,
                "event_time": event_time.isoformat(),
                "payload": payload("c1", 400_000.0),
            }
            r = await http.post(f"{deployment.url}/v1/predict", json={"event": event})
            assert r.status_code == 200, r.text
            (served,) = r.json()["predictions"]
            assert served["prediction_id"] == event_id and served["entity_id"] == "c1"
            assert served["features"]["applications_1h"] == 4.0  # three before it, and itself
            assert served["features"]["loan_mean_1h"] == pytest.approx((100_000 + 250_000 + 40_000 + 400_000) / 4)

            # ... then the same event through the stream.
            raw = {
                **envelope("test", event_time=event_time, event_id=event_id),
                "event_type": "loan_application",
                "entity_id": "c1",
                "payload": payload("c1", 400_000.0),
                "project": MODEL,
            }
            await producer.publish(EVENTS_RAW, raw)

            def of_event(evs: list[Any], topic: str, **match: Any) -> list[dict[str, Any]]:
                return [
                    e.value
                    for e in evs
                    if e.topic == topic
                    and e.value["source_event_id"] == event_id
                    and all(e.value.get(k) == v for k, v in match.items())
                ]

            evs = await reader.wait_for(
                lambda evs: bool(
                    of_event(evs, FEATURES_VECTORS)
                    and of_event(evs, PREDICTIONS, served="stream")
                    and of_event(evs, PREDICTIONS, served="http")
                ),
                timeout_s=60,
                what="the stream's vector and prediction of the event, and the HTTP prediction",
            )
            (vector,) = of_event(evs, FEATURES_VECTORS)
            (streamed,) = of_event(evs, PREDICTIONS, served="stream")
            (http_record,) = of_event(evs, PREDICTIONS, served="http")
            assert vector["features"] == served["features"]  # the same vector, every feature
            assert streamed["score"] == pytest.approx(served["score"], abs=1e-12)  # the same score
            assert http_record["score"] == served["score"] and http_record["entity_id"] == "c1"
            assert http_record["event_id"] != streamed["event_id"]  # two predictions of one event

            # A ready vector still works, and gives the same score for the same values.
            ready = {f: served["features"][f] for f in FEATURES}
            r = await http.post(f"{deployment.url}/v1/predict", json={"features": ready})
            assert r.status_code == 200, r.text
            assert r.json()["predictions"][0]["score"] == pytest.approx(served["score"], abs=1e-12)

            # A raw event the project's schema refuses: 422 naming the field.
            bad = {"type": "loan_application", "payload": {**payload("c1", 1.0), "loan": "lots"}}
            r = await http.post(f"{deployment.url}/v1/predict", json={"events": [event, bad]})
            assert r.status_code == 422, r.text
            assert r.json()["detail"]["errors"][0]["index"] == 1
            assert r.json()["detail"]["errors"][0]["field"] == "payload.loan"
    finally:
        deployment.stop()
        features.stop()
        await reader.stop()


async def test_http_predictions_are_published_and_their_labels_move_the_monitors_accuracy(
    namespace: Namespace, producer: EventProducer, tmp_path: Path
) -> None:
    project = project_file(tmp_path)
    model = trained()
    reader = await TopicReader(namespace, [PREDICTIONS]).start()
    deployment = start("driftline_deployment", namespace, project)
    monitoring = start("driftline_monitoring", namespace, project)
    ingestion = start("driftline_ingestion", namespace, project)
    try:
        for svc in (deployment, monitoring, ingestion):
            await svc.wait_ready(timeout_s=90)
        await promote(producer, namespace, model)
        rng = np.random.default_rng(11)
        async with httpx.AsyncClient(timeout=30) as http:
            await model_served(http, deployment.url)
            rows = [
                {
                    "salary": float(rng.uniform(20_000, 150_000)),
                    "commission": 1000.0,
                    "loan": float(rng.uniform(0, 500_000)),
                    "income": 0.0,
                    "loan_to_income": 0.0,
                    "applications_1h": 1.0,
                    "loan_mean_1h": float(rng.uniform(0, 500_000)),
                }
                for _ in range(60)
            ]
            for row in rows:
                row["income"] = row["salary"] + row["commission"]
                row["loan_to_income"] = row["loan"] / (row["income"] + 1)
            r = await http.post(f"{deployment.url}/v1/predict", json={"instances": rows})
            assert r.status_code == 200, r.text
            answered = r.json()["predictions"]
            ids = {p["prediction_id"] for p in answered}
            assert len(ids) == 60

            evs = await reader.wait_for(
                lambda evs: ids <= {e.value["source_event_id"] for e in evs}, timeout_s=30, what="60 predictions"
            )
            published = {e.value["source_event_id"]: e.value for e in evs}
            assert all(published[p["prediction_id"]]["served"] == "http" for p in answered)
            assert all(published[p["prediction_id"]]["score"] == p["score"] for p in answered)
            assert all(published[p["prediction_id"]]["correlation_id"] == r.json()["request_id"] for p in answered)
            assert to_matrix(rows, FEATURES).shape == (60, len(FEATURES))

            async def label(predictions: list[dict[str, Any]], right: bool) -> None:
                other = {"approve": "deny", "deny": "approve"}
                labels = [
                    {
                        "prediction_id": p["prediction_id"],
                        "entity_id": p["entity_id"],
                        "label": p["predicted_class"] if right else other[p["predicted_class"]],
                    }
                    for p in predictions
                ]
                resp = await http.post(f"{ingestion.url}/v1/labels", json={"labels": labels}, headers=TOKEN)
                assert resp.status_code == 200, resp.text

            async def performance(labelled: int) -> dict[str, Any]:
                resp = await http.get(f"{monitoring.url}/v1/drift")
                models = [m for m in resp.json()["models"] if m["model_name"] == MODEL]
                assert models and models[0]["performance"]["labelled_total"] >= labelled, resp.text
                perf: dict[str, Any] = models[0]["performance"]
                return perf

            await label(answered[:30], right=True)
            first = await eventually(lambda: performance(30), timeout_s=60)
            assert first["accuracy"] == 1.0
            await label(answered[30:], right=False)
            second = await eventually(lambda: performance(60), timeout_s=60)
            assert second["accuracy"] == pytest.approx(0.5)  # 30 right, 30 wrong: HTTP traffic is monitored
    finally:
        for svc in (ingestion, monitoring, deployment):
            svc.stop()
        await reader.stop()
