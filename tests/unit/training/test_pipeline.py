"""The CPU part of a run: reproducible, split by time, refusing what cannot make a model."""

from __future__ import annotations

import hashlib
import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from driftline.project import TrainingPolicy, load_project
from driftline_ml.models import build_estimator, load_model
from driftline_training import pipeline
from driftline_training.pipeline import Example, TrainingFailure

PROJECT = load_project()
START = datetime(2025, 1, 1, tzinfo=UTC)


def examples(n: int, *, seed: int = 0, label: str | None = None) -> list[Example]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        features = {name: float(rng.uniform(0, 10)) for name in PROJECT.features.names}
        features["elevel"] = float(rng.integers(0, 5))
        approve = features["salary"] + features["loan"] > 10
        out.append(
            Example(
                f"ev-{seed}-{i:05d}",
                START + timedelta(seconds=i),
                features,
                label or ("approve" if approve else "deny"),
            )
        )
    return out


POLICY = TrainingPolicy(min_examples=100, max_examples=1000, holdout_fraction=0.25, seed=3)


def test_same_examples_and_seed_give_the_same_metrics_fingerprint_and_predictions() -> None:
    data = examples(400)
    shuffled = random.Random(1).sample(data, len(data))
    a = pipeline.fit(PROJECT, data, POLICY)
    b = pipeline.fit(PROJECT, shuffled, POLICY)
    assert a.metrics == b.metrics
    assert a.dataset_fingerprint == b.dataset_fingerprint
    assert a.holdout_fingerprint == b.holdout_fingerprint
    assert a.reference_profile == b.reference_profile
    x = pipeline.feature_matrix(a.holdout, a.feature_names)
    assert (load_model(a.model_bytes).predict_proba(x) == load_model(b.model_bytes).predict_proba(x)).all()
    assert a.metrics["accuracy"] > 0.85
    assert set(a.metrics) == {"accuracy", "f1", "roc_auc", "log_loss"}


def test_the_holdout_fingerprint_covers_the_example_ids_and_the_feature_set_version() -> None:
    ids = [f"e{i}" for i in range(10)]
    base = pipeline.ids_fingerprint(ids, "1")
    assert pipeline.ids_fingerprint(list(reversed(ids)), "1") == base
    assert pipeline.ids_fingerprint(ids, "2") != base
    assert pipeline.ids_fingerprint([*ids[:-1], "e99"], "1") != base
    assert pipeline.ids_fingerprint(ids[:-1], "1") != base


def test_the_dataset_fingerprint_is_the_training_sets_digest_and_covers_values_and_labels() -> None:
    data = examples(200)
    base = pipeline.fit(PROJECT, data, POLICY)
    assert base.dataset_fingerprint == hashlib.sha256(base.training_set).hexdigest()
    # One feature value changed, or one label corrected: same ids, another fingerprint.
    e = data[10]
    changed_value = [*data[:10], replace(e, features={**e.features, "salary": e.features["salary"] + 1}), *data[11:]]
    flipped = "deny" if e.label == "approve" else "approve"
    corrected = [*data[:10], replace(e, label=flipped, label_event_id="correction"), *data[11:]]
    for other in (changed_value, corrected):
        result = pipeline.fit(PROJECT, other, POLICY)
        assert result.holdout_fingerprint == base.holdout_fingerprint
        assert result.dataset_fingerprint != base.dataset_fingerprint


def test_the_holdout_is_the_most_recent_part() -> None:
    data = examples(100)
    train, holdout = pipeline.split_by_time(list(reversed(data)), 0.25)
    assert len(holdout) == 25 and len(train) == 75
    assert max(e.event_time for e in train) < min(e.event_time for e in holdout)
    assert holdout == data[-25:]


def test_the_metadata_profiles_every_feature_and_the_score() -> None:
    result = pipeline.fit(PROJECT, examples(300), POLICY)
    profile = result.reference_profile
    assert set(profile["features"]) == set(PROJECT.features.names)
    for name in PROJECT.features.categorical:
        assert profile["features"][name]["kind"] == "categorical"
    assert profile["features"]["salary"]["kind"] == "numeric"
    assert profile["features"]["salary"]["count"] == len(result.train)
    assert profile["score"]["count"] == len(result.holdout)
    assert sum(profile["score"]["frequencies"]) == pytest.approx(1.0)
    assert result.seed == 7  # the project's estimator params fix random_state; that is what was used


def test_too_few_examples_fail_with_a_retryable_reason() -> None:
    with pytest.raises(TrainingFailure) as info:
        pipeline.fit(PROJECT, examples(50), POLICY)
    assert info.value.error_type == "too_few_examples" and info.value.retryable
    assert "50" in info.value.reason and "100" in info.value.reason


def test_one_class_only_fails() -> None:
    with pytest.raises(TrainingFailure) as info:
        pipeline.fit(PROJECT, examples(200, label="deny"), POLICY)
    assert info.value.error_type == "single_class"


def test_a_non_numeric_feature_value_fails_naming_the_feature() -> None:
    data = examples(200)
    broken = Example(data[0].example_id, data[0].event_time, {**data[0].features, "age": "old"}, data[0].label)
    with pytest.raises(TrainingFailure) as info:
        pipeline.fit(PROJECT, [broken, *data[1:]], POLICY)
    assert info.value.error_type == "bad_features" and "age" in info.value.reason


def test_numeric_strings_and_missing_values_are_accepted() -> None:
    data = examples(200)
    data[0] = Example(data[0].example_id, data[0].event_time, {**data[0].features, "age": "42.5"}, data[0].label)
    data[1] = Example(data[1].example_id, data[1].event_time, {**data[1].features, "age": None}, data[1].label)
    x = pipeline.feature_matrix(data[:2], ["age"])
    assert x[0, 0] == 42.5 and np.isnan(x[1, 0])


def test_request_parameters_override_the_policy_and_are_validated() -> None:
    policy = pipeline.effective_policy(PROJECT.training, {"max_examples": "50", "selection": "recent"})
    assert (policy.max_examples, policy.selection, policy.min_examples) == (50, "recent", PROJECT.training.min_examples)
    with pytest.raises(TrainingFailure, match="unknown training parameters"):
        pipeline.effective_policy(PROJECT.training, {"depth": "3"})
    with pytest.raises(TrainingFailure, match="holdout_fraction"):
        pipeline.effective_policy(PROJECT.training, {"holdout_fraction": "1.5"})
    with pytest.raises(TrainingFailure, match="selection"):
        pipeline.effective_policy(PROJECT.training, {"selection": "everything"})


def test_the_champion_is_evaluated_with_its_own_feature_columns() -> None:
    data = examples(300)
    train, holdout = pipeline.split_by_time(data, 0.25)
    champion = build_estimator(PROJECT.model, seed=1)
    champion.fit(pipeline.feature_matrix(train, ["salary", "loan"]), [e.label for e in train])
    metrics = pipeline.evaluate_on_holdout(champion, holdout, ["salary", "loan"], "approve")
    assert metrics["accuracy"] > 0.85


def test_with_refit_the_stored_model_learns_the_holdout_and_the_metrics_are_the_split_models() -> None:
    data = examples(400)
    refit = pipeline.fit(PROJECT, data, POLICY)
    split = pipeline.fit(PROJECT, data, POLICY.model_copy(update={"refit": False}))
    # The holdout metrics (and so the champion comparison) are the split model's either way ...
    assert refit.metrics == split.metrics and refit.refit and not split.refit
    x = pipeline.feature_matrix(refit.holdout, refit.feature_names)
    assert (refit.judged.predict_proba(x) == split.model.predict_proba(x)).all()
    # ... and the stored model is another fit, on every example, which a later run knows.
    stored = load_model(refit.model_bytes)
    assert (stored.predict_proba(x) == refit.model.predict_proba(x)).all()
    assert not (stored.predict_proba(x) == split.model.predict_proba(x)).all()
    assert refit.time_ranges()["train_end"] == refit.holdout[-1].event_time.isoformat()
    assert split.time_ranges()["train_end"] == split.train[-1].event_time.isoformat()
