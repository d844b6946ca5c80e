"""The training service on the real stack, run as a real process.

Examples are fed straight into the namespace's ``features.vectors`` and ``labels`` topics (no
features service needed); labels follow a simple rule of the features so a model can learn it.
"""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest

from driftline.artifacts import ArtifactStore
from driftline.catalog import (
    DRIFT_DETECTED,
    FEATURES_VECTORS,
    LABELS,
    MODELS_TRAINED,
    TRAINING_FAILED,
    TRAINING_REQUESTED,
    default_catalog,
)
from driftline.events import Event, derived_event_id, envelope, epoch_ms, new_event_id
from driftline.producer import EventProducer
from driftline.project import load_project
from driftline.serde import AvroSerde, SchemaRegistryClient
from driftline.settings import LOCAL_API_TOKEN
from driftline_ml.models import load_model, to_matrix
from tests.support import Namespace, ServiceProcess, TopicReader, eventually

AUTH = {"Authorization": f"Bearer {LOCAL_API_TOKEN}"}
PROJECT = load_project()
FSV = PROJECT.features.version


@dataclass(frozen=True)
class Row:
    raw_event_id: str
    entity_id: str
    event_time: datetime
    features: dict[str, float | None]
    label: str


def loan_rows(n: int, *, start: datetime, seed: int, inverted: bool = False) -> list[Row]:
    """Loan applications one second apart; approved when the loan is under twice the income
    (``inverted``: the opposite, a sudden concept drift). 2% of labels are flipped."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        salary = float(rng.uniform(20_000, 150_000))
        commission = 0.0 if salary >= 75_000 else float(rng.uniform(10_000, 75_000))
        hvalue, hyears, loan = (
            float(rng.uniform(50_000, 900_000)),
            float(rng.integers(1, 30)),
            float(rng.uniform(0, 500_000)),
        )
        income = salary + commission
        features: dict[str, float | None] = {
            "salary": salary,
            "commission": commission,
            "age": float(rng.integers(20, 80)),
            "elevel": float(rng.integers(0, 5)),
            "car": float(rng.integers(1, 21)),
            "zipcode": float(rng.integers(0, 9)),
            "hvalue": hvalue,
            "hyears": hyears,
            "loan": loan,
            "income": income,
            "loan_to_income": loan / (income + 1),
            "equity": 0.1 * hvalue * max(hyears - 20, 0),
            "applications_1h": 1.0,
            "loan_mean_1h": loan,
        }
        approve = (loan < 2 * income) != inverted
        if rng.random() < 0.02:
            approve = not approve
        rows.append(
            Row(
                raw_event_id=new_event_id(),
                entity_id=f"c{int(rng.integers(0, 300))}",
                event_time=start + timedelta(seconds=i),
                features=features,
                label="approve" if approve else "deny",
            )
        )
    return rows


def vector_record(row: Row) -> dict[str, Any]:
    return {
        **envelope(
            "test-features",
            event_id=derived_event_id(row.raw_event_id, FSV),
            event_time=row.event_time,
            correlation_id=row.raw_event_id,
        ),
        "causation_id": row.raw_event_id,
        "source_event_id": row.raw_event_id,
        "entity_id": row.entity_id,
        "feature_set_version": FSV,
        "features": row.features,
        "late": False,
    }


def label_record(row: Row) -> dict[str, Any]:
    return {
        **envelope("test-ingestion", event_time=row.event_time + timedelta(minutes=5)),
        "labelled_event_id": row.raw_event_id,
        "entity_id": row.entity_id,
        "label": row.label,
        "source": "test",
    }


def drift_record(
    *,
    episode_id: str,
    window_start: datetime,
    model_name: str | None = None,
    onset: datetime | None = None,
    at: datetime | None = None,
) -> dict[str, Any]:
    return {
        **envelope("test-monitoring", event_time=at),
        "episode_id": episode_id,
        "kind": "performance",
        "method": "accuracy_drop",
        "statistic": 0.4,
        "threshold": 0.12,
        "window_start": window_start,
        "window_end": window_start + timedelta(minutes=10),
        "window_size": 600,
        "onset": onset,
        "features": [],
        "model_name": model_name or PROJECT.model.name,
        "model_version": 1,
        "evidence": [
            {
                "feature": None,
                "method": "accuracy_drop",
                "statistic": 0.4,
                "threshold": 0.12,
                "p_value": None,
                "drifted": True,
            }
        ],
    }


async def feed(producer: EventProducer, rows: Sequence[Row], *, labels_first_every: int = 2) -> None:
    """Vectors and labels; for every ``labels_first_every``-th row the label is sent first."""
    items: list[tuple[str, dict[str, Any]]] = []
    for i, row in enumerate(rows):
        pair = [(FEATURES_VECTORS, vector_record(row)), (LABELS, label_record(row))]
        items += reversed(pair) if i % labels_first_every == 0 else pair
    for start in range(0, len(items), 500):
        await producer.publish_many(items[start : start + 500])


@pytest.fixture
async def producer(namespace: Namespace) -> AsyncIterator[EventProducer]:
    registry = SchemaRegistryClient.from_settings(namespace.stack)
    p = EventProducer(namespace.stack.kafka, AvroSerde(registry, topic_prefix=namespace.prefix), "test")
    await p.start(default_catalog().names())
    yield p
    await p.stop()
    await registry.close()


@pytest.fixture
async def training(namespace: Namespace) -> AsyncIterator[ServiceProcess]:
    svc = ServiceProcess("driftline_training", namespace).start("DRIFTLINE_TRAINING_")
    try:
        await svc.wait_ready(timeout_s=120)
        yield svc
    finally:
        svc.stop()


async def wait_examples(client: httpx.AsyncClient, url: str, labelled: int) -> None:
    async def check() -> None:
        r = await client.get(f"{url}/v1/examples", params={"project": PROJECT.name})
        assert r.status_code == 200 and r.json()["labelled"] >= labelled, r.text

    await eventually(check, timeout_s=120, interval_s=0.5)


def results_for(reader: TopicReader, run_id: str) -> list[Event]:
    return [e for e in reader.events if e.topic in (MODELS_TRAINED, TRAINING_FAILED) and e.value["run_id"] == run_id]


async def wait_result(reader: TopicReader, run_id: str, timeout_s: float = 240) -> Event:
    await reader.wait_for(lambda _: bool(results_for(reader, run_id)), timeout_s=timeout_s, what=f"result of {run_id}")
    return results_for(reader, run_id)[0]


async def request_run(client: httpx.AsyncClient, url: str, **body: Any) -> dict[str, Any]:
    r = await client.post(f"{url}/v1/training-requests", json=body, headers=AUTH)
    assert r.status_code == 202, r.text
    out: dict[str, Any] = r.json()
    return out


REQUIRED_METADATA = {
    "run_id", "model_name", "created_at", "estimator", "params", "seed", "feature_names", "feature_set_version",
    "classes", "positive_class", "metrics", "champion_version", "champion_metrics", "dataset_fingerprint",
    "holdout_fingerprint", "n_train", "n_holdout", "library_versions", "code_version", "duration_s", "trigger",
    "drift_episode_id", "training_request_id", "reference_profile",
}  # fmt: skip


async def test_a_training_request_produces_a_verified_artifact_and_a_models_trained_event(
    namespace: Namespace, producer: EventProducer, training: ServiceProcess
) -> None:
    start = datetime.now(UTC) - timedelta(hours=3)
    rows = loan_rows(600, start=start, seed=1)
    reader = await TopicReader(namespace, [TRAINING_REQUESTED, MODELS_TRAINED, TRAINING_FAILED]).start()
    store = ArtifactStore.from_settings(namespace.stack)
    try:
        await feed(producer, rows)
        async with httpx.AsyncClient(timeout=30) as client:
            url = training.url
            await wait_examples(client, url, 600)

            # Refused up front: no token, unknown policy parameter, a model this project does not train.
            r = await client.post(f"{url}/v1/training-requests", json={})
            assert r.status_code == 401
            r = await client.post(f"{url}/v1/training-requests", json={"parameters": {"depth": 3}}, headers=AUTH)
            assert r.status_code == 422 and "depth" in r.text
            r = await client.post(f"{url}/v1/training-requests", json={"model_name": "other"}, headers=AUTH)
            assert r.status_code == 404

            # A run that cannot succeed fails loudly and does not block the next request.
            failing = await request_run(client, url, parameters={"min_examples": 5000})
            first = await request_run(client, url, parameters={"selection": "recent"})
            failed = await wait_result(reader, failing["run_id"])
            assert failed.topic == TRAINING_FAILED
            assert failed.value["error_type"] == "too_few_examples" and failed.value["retryable"] is True
            assert failed.correlation_id == failing["correlation_id"]
            trained = await wait_result(reader, first["run_id"])
            assert trained.topic == MODELS_TRAINED, trained.value

            v = trained.value
            (request_event,) = [
                e for e in reader.on(TRAINING_REQUESTED) if e.value["request_id"] == first["request_id"]
            ]
            assert trained.correlation_id == first["correlation_id"] == request_event.correlation_id
            assert v["causation_id"] == request_event.event_id
            assert v["run_id"] == derived_event_id("run", first["request_id"])
            # Content-addressed keys: an announced object is never replaced by other bytes.
            assert v["artifact_key"] == f"models/{PROJECT.model.name}/{v['run_id']}/model-{v['artifact_sha256']}.skops"
            assert (
                v["metadata_key"] == f"models/{PROJECT.model.name}/{v['run_id']}/metadata-{v['metadata_sha256']}.json"
            )
            assert (v["n_train"], v["n_holdout"]) == (450, 150)
            assert v["metrics"]["accuracy"] > 0.85 and set(v["metrics"]) == {"accuracy", "f1", "roc_auc", "log_loss"}
            assert v["champion_version"] is None and v["champion_metrics"] is None
            assert v["trigger"] == "request" and v["training_request_id"] == first["request_id"]
            assert v["feature_names"] == PROJECT.model_features

            # The artifact's digest verifies, it loads under the trusted-types policy and predicts the rule.
            data = await store.get(v["artifact_key"], v["artifact_sha256"])
            model = load_model(data)
            holdout = rows[-150:]
            predicted = model.predict(to_matrix([r.features for r in holdout], v["feature_names"]))
            # The metrics are the split model's on the holdout; the stored model was refitted on
            # every example (training.refit), the holdout included, so it does at least as well there
            # and its metadata says its training data ends where the holdout ends.
            assert np.mean(predicted == np.asarray([r.label for r in holdout])) >= v["metrics"]["accuracy"]
            metadata = await store.get_json(v["metadata_key"], v["metadata_sha256"])
            assert metadata["selection"]["train_end"] == metadata["selection"]["holdout_end"]
            assert set(metadata) >= REQUIRED_METADATA
            assert metadata["artifact_sha256"] == v["artifact_sha256"]
            assert metadata["dataset_fingerprint"] == v["dataset_fingerprint"]
            assert set(metadata["reference_profile"]["features"]) == set(PROJECT.features.names)
            assert metadata["reference_profile"]["features"]["elevel"]["kind"] == "categorical"
            assert metadata["reference_profile"]["features"]["salary"]["kind"] == "numeric"
            score = metadata["reference_profile"]["score"]
            assert score["kind"] == "numeric" and score["count"] == 150
            assert sum(score["frequencies"]) == pytest.approx(1.0)

            run = (await client.get(f"{url}/v1/runs/{first['run_id']}")).json()
            assert run["status"] == "succeeded" and run["metrics"] == v["metrics"] and run["attempts"] == 1
            assert (await client.get(f"{url}/v1/runs/{first['request_id']}")).json()["run_id"] == first["run_id"]
            failed_run = (await client.get(f"{url}/v1/runs/{failing['run_id']}")).json()
            assert failed_run["status"] == "failed" and failed_run["error_type"] == "too_few_examples"

            # A re-delivered request does not start a second run; a new request on the same
            # examples with the same seed reproduces the metrics and the fingerprint.
            await producer.publish(TRAINING_REQUESTED, request_event.value)
            again = await request_run(client, url, parameters={"selection": "recent"})
            repeat = await wait_result(reader, again["run_id"])
            assert repeat.topic == MODELS_TRAINED
            assert repeat.value["run_id"] != v["run_id"]
            assert repeat.value["dataset_fingerprint"] == v["dataset_fingerprint"]
            assert repeat.value["holdout_fingerprint"] == v["holdout_fingerprint"]
            assert repeat.value["metrics"] == v["metrics"]
            assert len(results_for(reader, v["run_id"])) == 1
            runs = (await client.get(f"{url}/v1/runs")).json()["runs"]
            assert sorted(r["status"] for r in runs) == ["failed", "succeeded", "succeeded"]
    finally:
        await reader.stop()


async def test_drift_events_within_the_cooldown_cause_one_run(
    namespace: Namespace, producer: EventProducer, training: ServiceProcess
) -> None:
    start = datetime.now(UTC) - timedelta(hours=2)
    # The concept switches at row 100 (the drift onset below): only the examples after it teach it.
    rows = loan_rows(100, start=start, seed=2)
    rows += loan_rows(400, start=start + timedelta(seconds=100), seed=3, inverted=True)
    reader = await TopicReader(namespace, [TRAINING_REQUESTED, MODELS_TRAINED, TRAINING_FAILED]).start()
    store = ArtifactStore.from_settings(namespace.stack)
    try:
        await feed(producer, rows)
        async with httpx.AsyncClient(timeout=30) as client:
            url = training.url
            await wait_examples(client, url, 500)
            onset = rows[100].event_time
            # The window starts before the change; the onset estimate is where training starts.
            first = drift_record(episode_id="episode-1", window_start=rows[50].event_time, onset=onset)
            second = drift_record(episode_id="episode-2", window_start=onset + timedelta(seconds=30))
            other = drift_record(episode_id="episode-x", window_start=onset, model_name="someone-elses-model")
            # The first episode is delivered twice; the second comes within the cooldown (both are
            # stamped now: no labelled example lies between them, nor a second).
            for record in (first, second, first, other):
                await producer.publish(DRIFT_DETECTED, record)

            async def all_decided() -> dict[str, str]:
                triggers = (await client.get(f"{url}/v1/triggers")).json()["triggers"]
                decisions = {t["episode_id"]: t["decision"] for t in triggers}
                assert len(decisions) == 3, decisions
                return decisions

            decisions = await eventually(all_decided, timeout_s=60)
            assert decisions == {"episode-1": "requested", "episode-2": "cooldown", "episode-x": "ignored"}

            run_id = derived_event_id("run", derived_event_id("drift-request", PROJECT.model.name, "episode-1"))
            trained = await wait_result(reader, run_id)
            assert trained.topic == MODELS_TRAINED, trained.value
            requests = reader.on(TRAINING_REQUESTED)
            assert len(requests) == 1
            (request,) = requests
            assert request.value["reason"] == "drift" and request.value["drift_episode_id"] == "episode-1"
            assert request.value["since"] == epoch_ms(onset)
            # One chain: drift.detected → training.requested → models.trained.
            assert request.correlation_id == first["event_id"] == trained.correlation_id
            assert request.value["causation_id"] == first["event_id"]
            assert trained.value["causation_id"] == request.event_id
            assert trained.value["trigger"] == "drift" and trained.value["drift_episode_id"] == "episode-1"
            # since_drift selection: the run weighed 'since the onset' (400) against all 500 on the
            # newest quarter after the onset, and after a concept switch the older examples lose.
            metadata = await store.get_json(trained.value["metadata_key"], trained.value["metadata_sha256"])
            window = metadata["selection"]["window"]
            assert {k: window[k] for k in ("chosen", "since_onset", "recent", "holdout")} == {
                "chosen": "since_onset",
                "since_onset": 400,
                "recent": 500,
                "holdout": 100,
            }, window
            assert window["accuracy"]["since_onset"] >= window["accuracy"]["recent"], window
            assert trained.value["n_train"] + trained.value["n_holdout"] == 400
            runs = (await client.get(f"{url}/v1/runs")).json()["runs"]
            assert [r["run_id"] for r in runs] == [run_id]
    finally:
        await reader.stop()


async def test_a_count_cooldown_is_measured_in_the_examples_between_the_drifts(
    namespace: Namespace, producer: EventProducer, training: ServiceProcess
) -> None:
    """The shipped project's cooldown is a count of labelled examples: a drift with one too few
    after a live request's is held, the next one is requested, whatever the time between them."""
    cooldown = PROJECT.training.cooldown_spec
    assert cooldown.unit == "labels"
    n, base = int(cooldown.amount), 100
    rows = loan_rows(base + n + 50, start=datetime.now(UTC) - timedelta(hours=2), seed=6)  # every row labelled
    await feed(producer, rows)
    async with httpx.AsyncClient(timeout=30) as client:
        url = training.url
        await wait_examples(client, url, len(rows))
        since = rows[0].event_time
        first = drift_record(episode_id="count-1", window_start=since, at=rows[base].event_time)
        # n - 1 labelled examples after the first drift's event time, then n.
        held = drift_record(episode_id="count-2", window_start=since, at=rows[base + n - 1].event_time)
        after = drift_record(episode_id="count-3", window_start=since, at=rows[base + n].event_time)
        await producer.publish_many([(DRIFT_DETECTED, r) for r in (first, held, after)])

        async def all_decided() -> dict[str, dict[str, Any]]:
            triggers = (await client.get(f"{url}/v1/triggers")).json()["triggers"]
            assert len(triggers) == 3, triggers
            return {t["episode_id"]: t for t in triggers}

        triggers = await eventually(all_decided, timeout_s=60)
        assert {e: t["decision"] for e, t in triggers.items()} == {
            "count-1": "requested",
            "count-2": "cooldown",
            "count-3": "requested",
        }
        assert f"{n - 1} labels from this one (cooldown {cooldown})" in triggers["count-2"]["reason"]


async def test_a_drift_that_comes_before_its_labels_waits_for_them_then_trains(
    namespace: Namespace, producer: EventProducer, training: ServiceProcess
) -> None:
    start = datetime.now(UTC) - timedelta(hours=2)
    rows = loan_rows(500, start=start, seed=3)
    onset = rows[100].event_time
    reader = await TopicReader(namespace, [TRAINING_REQUESTED, MODELS_TRAINED, TRAINING_FAILED]).start()
    try:
        # Every vector, but labels only up to 100 events after the drift onset (300 are needed).
        await producer.publish_many([(FEATURES_VECTORS, vector_record(r)) for r in rows])
        await producer.publish_many([(LABELS, label_record(r)) for r in rows[:200]])
        async with httpx.AsyncClient(timeout=30) as client:
            url = training.url
            await wait_examples(client, url, 200)
            drift = drift_record(episode_id="episode-lag", window_start=onset)
            await producer.publish(DRIFT_DETECTED, drift)

            def in_chain(evs: list[Event]) -> list[Event]:
                return [e for e in evs if e.correlation_id == drift["event_id"]]

            async def waiting() -> dict[str, Any]:
                triggers = (await client.get(f"{url}/v1/triggers")).json()["triggers"]
                assert len(triggers) == 1, triggers
                (trigger,) = triggers
                assert (trigger["decision"], trigger["waiting"], trigger["attempts"]) == ("requested", True, 0)
                return dict(trigger)

            await eventually(waiting, timeout_s=60)
            # No run that can only fail: nothing is requested while the labels are missing.
            await asyncio.sleep(3)
            await reader.poll(1.0)
            assert in_chain(reader.events) == []

            # The missing labels arrive: the request goes out, in the drift's chain, and trains.
            await producer.publish_many([(LABELS, label_record(r)) for r in rows[200:]])
            await reader.wait_for(
                lambda evs: any(e.topic == MODELS_TRAINED for e in in_chain(evs)), timeout_s=240, what="trained"
            )
            chain = in_chain(reader.events)
            assert [e.topic for e in chain] == [TRAINING_REQUESTED, MODELS_TRAINED]
            request, trained = chain
            assert request.value["causation_id"] == drift["event_id"]
            assert request.value["drift_episode_id"] == "episode-lag"
            assert request.value["since"] == epoch_ms(onset)
            # It asks as soon as the policy's minimum of labelled examples since the onset exists.
            assert 300 == PROJECT.training.min_examples <= trained.value["n_train"] + trained.value["n_holdout"] <= 400
            (trigger,) = (await client.get(f"{url}/v1/triggers")).json()["triggers"]
            assert (trigger["waiting"], trigger["attempts"]) == (False, 1)
    finally:
        await reader.stop()


async def test_a_drift_run_that_fails_does_not_use_up_the_cooldown(
    namespace: Namespace, producer: EventProducer, training: ServiceProcess
) -> None:
    """Two drift episodes within the cooldown: the first one's run fails (after its onset every
    label is 'deny', one class only); the second one is then trained rather than lost."""
    start = datetime.now(UTC) - timedelta(hours=2)
    mixed = loan_rows(200, start=start, seed=4)
    one_class = [
        Row(r.raw_event_id, r.entity_id, r.event_time, r.features, "deny")
        for r in loan_rows(400, start=start + timedelta(seconds=200), seed=5)
    ]
    rows = mixed + one_class
    reader = await TopicReader(namespace, [TRAINING_REQUESTED, MODELS_TRAINED, TRAINING_FAILED]).start()
    try:
        await feed(producer, rows)
        async with httpx.AsyncClient(timeout=30) as client:
            url = training.url
            await wait_examples(client, url, 600)
            failing = drift_record(episode_id="episode-a", window_start=one_class[0].event_time)
            later = drift_record(episode_id="episode-b", window_start=rows[0].event_time)
            # Both at once: episode-b is decided while episode-a's run is still pending.
            await producer.publish_many([(DRIFT_DETECTED, failing), (DRIFT_DETECTED, later)])

            def in_chain(evs: list[Event], record: dict[str, Any]) -> list[Event]:
                return [e for e in evs if e.correlation_id == record["event_id"]]

            await reader.wait_for(
                lambda evs: any(e.topic == MODELS_TRAINED for e in in_chain(evs, later)),
                timeout_s=240,
                what="episode-b trained after episode-a's run failed",
            )
            (failed,) = [e for e in in_chain(reader.events, failing) if e.topic == TRAINING_FAILED]
            assert failed.value["error_type"] == "single_class"
            (trained,) = [e for e in in_chain(reader.events, later) if e.topic == MODELS_TRAINED]
            assert trained.value["drift_episode_id"] == "episode-b"
            triggers = {t["episode_id"]: t for t in (await client.get(f"{url}/v1/triggers")).json()["triggers"]}
            assert triggers["episode-a"]["decision"] == triggers["episode-b"]["decision"] == "requested"
    finally:
        await reader.stop()


def cli(namespace: Namespace, *args: str) -> subprocess.CompletedProcess[str]:
    """The driftline command, as an operator runs it, against this namespace's stack."""
    return subprocess.run(
        [sys.executable, "-m", "driftline_cli.main", *args],
        env={**namespace.env(), "COLUMNS": "250"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


async def test_a_run_is_reproduced_from_its_recorded_training_set_and_tampering_is_detected(
    namespace: Namespace, producer: EventProducer, training: ServiceProcess
) -> None:
    start = datetime.now(UTC) - timedelta(hours=3)
    rows = loan_rows(400, start=start, seed=5)
    reader = await TopicReader(namespace, [MODELS_TRAINED, TRAINING_FAILED]).start()
    store = ArtifactStore.from_settings(namespace.stack)
    try:
        await feed(producer, rows)
        # A label correction is a new record for the same event: the run uses it, and its
        # training set says which record the label came from.
        corrected = rows[50]
        flipped = "deny" if corrected.label == "approve" else "approve"
        correction = {**label_record(corrected), "label": flipped}
        correction.update(envelope("test-ingestion", event_time=corrected.event_time + timedelta(minutes=30)))
        await producer.publish(LABELS, correction)
        async with httpx.AsyncClient(timeout=30) as client:
            await wait_examples(client, training.url, 400)

            async def corrected_in_store() -> None:
                r = await client.get(f"{training.url}/v1/examples", params={"project": PROJECT.name})
                assert r.json()["label_records"] >= 401, r.text

            await eventually(corrected_in_store, timeout_s=60, interval_s=0.5)
            run = await request_run(client, training.url, parameters={"selection": "recent"})
            trained = await wait_result(reader, run["run_id"])
        assert trained.topic == MODELS_TRAINED, trained.value
        v = trained.value
        key, sha = v["training_set_key"], v["training_set_sha256"]
        assert key == f"models/{PROJECT.model.name}/{v['run_id']}/training-set-{sha}.parquet"
        assert sha == v["dataset_fingerprint"]
        metadata = await store.get_json(v["metadata_key"], v["metadata_sha256"])
        assert v["code_version"] == metadata["code_version"] and v["code_version"] != "unknown"
        data = await store.get(key, sha)
        assert v["training_set_size"] == len(data)
        assert v["labels_as_of"] is not None and v["train_start"] == rows[0].event_time.replace(
            microsecond=rows[0].event_time.microsecond // 1000 * 1000
        )

        # The file is plain Parquet with every example, its values, its label record and its split.
        table = pq.read_table(io.BytesIO(data)).to_pylist()
        assert len(table) == 400 and [r["split"] for r in table].count("holdout") == v["n_holdout"]
        by_id = {r["example_id"]: r for r in table}
        assert by_id[corrected.raw_event_id]["label"] == flipped
        assert by_id[corrected.raw_event_id]["label_event_id"] == correction["event_id"]
        assert by_id[rows[7].raw_event_id]["feature.salary"] == rows[7].features["salary"]

        # Reproduced here and now: identical holdout predictions and, in the same environment,
        # identical model bytes.
        done = cli(namespace, "runs", "reproduce", v["run_id"], "--url", training.url, "--json")
        assert done.returncode == 0, done.stdout + done.stderr
        report = json.loads(done.stdout)
        assert report["predictions_identical"] and report["probabilities_identical"]
        assert report["n_holdout"] == v["n_holdout"] and report["n_train"] == v["n_train"]
        assert report["model_bytes_identical"] and report["new_model_sha256"] == v["artifact_sha256"]
        assert report["library_differences"] == {}
        table_out = cli(namespace, "runs", "reproduce", v["run_id"], "--url", training.url)
        assert table_out.returncode == 0 and "identical" in table_out.stdout, table_out.stdout

        # Tampering: one label flipped in the stored training set, a valid Parquet file still.
        rewritten = pq.read_table(io.BytesIO(data))
        labels = rewritten.column("label").to_pylist()
        labels[0] = "deny" if labels[0] == "approve" else "approve"
        tampered = io.BytesIO()
        pq.write_table(rewritten.set_column(rewritten.schema.get_field_index("label"), "label", [labels]), tampered)
        await store.put(key, tampered.getvalue())
        refused = cli(namespace, "runs", "reproduce", v["run_id"], "--url", training.url)
        assert refused.returncode == 3, refused.stdout + refused.stderr
        assert "SHA-256" in refused.stderr and key in refused.stderr.replace("\n", "")
    finally:
        await reader.stop()
