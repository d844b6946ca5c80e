"""A small loan-approval world for the deployment and monitoring tests and the predict benchmark.

Rows follow the shipped example project's model features (an Agrawal-style generator); labels
come from one of two concepts so a test can switch the concept (performance drift) or scale a
field (covariate shift). A model is trained, dumped with skops and described by a metadata
document shaped like the one training writes (reference profile included), so tests can put
both into the object store and publish a ``ModelPromoted`` as the registry would.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier

from driftline.artifacts import ArtifactStore
from driftline.catalog import FEATURES_VECTORS, LABELS, MODELS_PROMOTED, PREDICTIONS
from driftline.events import derived_event_id, envelope
from driftline.producer import EventProducer
from driftline_ml.models import dump_model, positive_scores, to_matrix
from driftline_ml.profiles import build_profiles, numeric_profile

MODEL_NAME = "loan-approval"
FEATURES = [
    "salary",
    "commission",
    "age",
    "elevel",
    "car",
    "zipcode",
    "hvalue",
    "hyears",
    "loan",
    "income",
    "loan_to_income",
    "equity",
]
CATEGORICAL = ["elevel", "car", "zipcode"]
CLASSES = ["deny", "approve"]
POSITIVE = "approve"
T0 = datetime(2025, 1, 1, tzinfo=UTC)


def generate(
    n: int, seed: int, *, salary_scale: float = 1.0, concept: str = "a", noise: float = 0.05
) -> tuple[list[dict[str, float]], list[str]]:
    """``n`` rows and their labels; ``salary_scale`` shifts salary, ``concept`` picks the labelling."""
    rng = np.random.default_rng(seed)
    salary = rng.uniform(20_000, 150_000, n) * salary_scale
    commission = np.where(salary >= 75_000, 0.0, rng.uniform(10_000, 75_000, n))
    age = rng.integers(20, 81, n).astype(float)
    elevel = rng.integers(0, 5, n).astype(float)
    car = rng.integers(1, 21, n).astype(float)
    zipcode = rng.integers(0, 9, n).astype(float)
    hvalue = (9 - zipcode) * 100_000 * rng.uniform(0.5, 1.5, n)
    hyears = rng.integers(1, 31, n).astype(float)
    loan = rng.uniform(0, 500_000, n)
    income = salary + commission
    columns = {
        "salary": salary,
        "commission": commission,
        "age": age,
        "elevel": elevel,
        "car": car,
        "zipcode": zipcode,
        "hvalue": hvalue,
        "hyears": hyears,
        "loan": loan,
        "income": income,
        "loan_to_income": loan / (income + 1),
        "equity": 0.1 * hvalue * np.maximum(hyears - 20, 0),
    }
    if concept == "a":  # Agrawal's function 2: salary band depends on age
        approve = np.where(
            age < 40,
            (salary >= 50_000) & (salary <= 100_000),
            np.where(age < 60, (salary >= 75_000) & (salary <= 125_000), (salary >= 25_000) & (salary <= 75_000)),
        )
    else:  # a different world: the loan size against income decides
        approve = loan < 2.5 * income
    flip = rng.random(n) < noise
    approve = approve ^ flip
    rows = [{name: float(columns[name][i]) for name in FEATURES} for i in range(n)]
    labels = [POSITIVE if a else "deny" for a in approve]
    return rows, labels


@dataclass
class TrainedModel:
    estimator: Any
    artifact: bytes
    metadata: dict[str, Any]
    run_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    @property
    def accuracy(self) -> float:
        return float(self.metadata["metrics"]["accuracy"])

    def scores(self, rows: list[dict[str, float]]) -> np.ndarray:
        return positive_scores(self.estimator, to_matrix(rows, FEATURES), POSITIVE)


def train(seed: int = 1, n: int = 2400, *, max_iter: int = 60, concept: str = "a") -> TrainedModel:
    """Fit a small model; metadata as training writes it (holdout metrics, reference profile)."""
    rows, labels = generate(n, seed, concept=concept)
    x = to_matrix(rows, FEATURES)
    y = np.asarray(labels)
    cut = int(n * 0.75)
    estimator = HistGradientBoostingClassifier(max_iter=max_iter, random_state=seed)
    estimator.fit(x[:cut], y[:cut])
    holdout_scores = positive_scores(estimator, x[cut:], POSITIVE)
    accuracy = float((estimator.predict(x[cut:]) == y[cut:]).mean())
    run_id = str(uuid.uuid4())
    metadata = {
        "run_id": run_id,
        "model_name": MODEL_NAME,
        "created_at": datetime.now(UTC).isoformat(),
        "estimator": "sklearn.ensemble.HistGradientBoostingClassifier",
        "params": {"max_iter": max_iter},
        "seed": seed,
        "feature_names": FEATURES,
        "feature_set_version": "1",
        "classes": CLASSES,
        "positive_class": POSITIVE,
        "metrics": {"accuracy": accuracy},
        "n_train": cut,
        "n_holdout": n - cut,
        "reference_profile": {
            "features": build_profiles(x, FEATURES, CATEGORICAL),
            # Scores of the holdout, not of the training rows: those are over-confident.
            "score": numeric_profile(holdout_scores),
        },
    }
    return TrainedModel(estimator, dump_model(estimator), metadata, run_id)


async def store_model(store: ArtifactStore, model: TrainedModel) -> dict[str, str]:
    """Put the artifact and its metadata into the object store; the keys and digests."""
    base = f"models/{MODEL_NAME}/{model.run_id}"
    art = await store.put(f"{base}/model.skops", model.artifact)
    meta = await store.put_json(f"{base}/metadata.json", model.metadata)
    return {
        "artifact_bucket": store.bucket,
        "artifact_key": art.key,
        "artifact_sha256": art.sha256,
        "metadata_key": meta.key,
        "metadata_sha256": meta.sha256,
    }


def promotion(
    model: TrainedModel,
    refs: dict[str, str],
    version: int,
    *,
    action: str = "promote",
    previous_version: int | None = None,
) -> dict[str, Any]:
    return {
        **envelope("test-registry"),
        "model_name": MODEL_NAME,
        "version": version,
        "run_id": model.run_id,
        **refs,
        "feature_names": FEATURES,
        "previous_version": previous_version,
        "action": action,
        "reason": f"test {action} of v{version}",
        "actor": "test",
        "metrics": {"accuracy": model.accuracy},
        "drift_episode_id": None,
    }


async def publish_promotion(
    producer: EventProducer,
    store: ArtifactStore,
    model: TrainedModel,
    version: int,
    *,
    action: str = "promote",
    tamper: bool = False,
) -> dict[str, Any]:
    """Store the model and announce it on models.promoted; ``tamper`` corrupts the stored artifact."""
    refs = await store_model(store, model)
    if tamper:  # the digest in the event is the real one; the object no longer matches it
        await store.put(refs["artifact_key"], model.artifact[:-16] + b"\x00" * 16)
    record = promotion(model, refs, version, action=action)
    await producer.publish(MODELS_PROMOTED, record)
    return record


def vector(
    row: dict[str, float], i: int, *, entity: str | None = None, source_event_id: str | None = None
) -> dict[str, Any]:
    """A FeatureVectorComputed record for row ``i`` (event time: one second per row)."""
    source = source_event_id or str(uuid.uuid4())
    return {
        **envelope("test-features", event_time=T0 + timedelta(seconds=i), event_id=derived_event_id(source, "1")),
        "source_event_id": source,
        "entity_id": entity or f"c-{i % 97}",
        "feature_set_version": "1",
        "features": dict(row),
        "late": False,
    }


def prediction(vec: dict[str, Any], score: float, version: int, *, shadow: bool = False) -> dict[str, Any]:
    slot = "challenger" if shadow else "champion"
    return {
        **envelope(
            "test-deployment",
            cause=vec,
            event_time=vec["event_time"],
            event_id=derived_event_id(vec["source_event_id"], MODEL_NAME, version, slot),
        ),
        "source_event_id": vec["source_event_id"],
        "entity_id": vec["entity_id"],
        "model_name": MODEL_NAME,
        "model_version": version,
        "slot": slot,
        "shadow": shadow,
        "score": float(score),
        "predicted_class": POSITIVE if score >= 0.5 else "deny",
        "scoring_latency_ms": 0.1,
    }


def label(vec: dict[str, Any], value: str) -> dict[str, Any]:
    return {
        **envelope("test-ingestion", event_time=vec["event_time"]),
        "labelled_event_id": vec["source_event_id"],
        "entity_id": vec["entity_id"],
        "label": value,
        "source": "test",
    }


TOPICS = [FEATURES_VECTORS, PREDICTIONS, LABELS, MODELS_PROMOTED]
