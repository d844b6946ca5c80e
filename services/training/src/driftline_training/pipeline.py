"""The CPU part of a training run, free of I/O: split, fit, evaluate, profile, serialise.

Everything here is blocking and deterministic for the same examples and seed; the handlers run
it off the event loop (``asyncio.to_thread``).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from pydantic import ValidationError
from sklearn.metrics import accuracy_score, f1_score, log_loss, roc_auc_score

from driftline.project import Project, TrainingPolicy
from driftline_ml.models import (
    UnsafeArtifactError,
    build_estimator,
    dump_model,
    positive_scores,
    trusted_types_for,
)
from driftline_ml.profiles import build_profiles, numeric_profile
from driftline_ml.trainingset import model_matrix, number, write_training_set

# Policy values a training request may override (TrainingRequested.parameters).
OVERRIDABLE = ("min_examples", "max_examples", "holdout_fraction", "selection", "seed", "refit")
# Failures worth another attempt of the same run after a pause (an outage of a dependency).
# Other retryable failures (too few examples, one class) need new data, not a pause.
RETRIED_IN_PLACE = frozenset({"object_store_unavailable"})


class TrainingFailure(Exception):
    """A run that cannot produce a model; becomes a training.failed event with this error type."""

    def __init__(self, error_type: str, reason: str, *, retryable: bool = False) -> None:
        super().__init__(reason)
        self.error_type = error_type
        self.reason = reason
        self.retryable = retryable


@dataclass(frozen=True, slots=True)
class Example:
    """One labelled example: the feature vector of a raw event joined with its label."""

    example_id: str  # the raw event's id (the join key of vectors and labels)
    event_time: datetime
    features: Mapping[str, Any]
    label: str
    label_event_id: str | None = None  # the labels record the label comes from
    label_time: datetime | None = None  # that record's event time


def effective_policy(base: TrainingPolicy, parameters: Mapping[str, str]) -> TrainingPolicy:
    """The project's training policy with a request's overrides applied (validated)."""
    unknown = sorted(set(parameters) - set(OVERRIDABLE))
    if unknown:
        raise TrainingFailure(
            "invalid_parameters", f"unknown training parameters {unknown}: allowed are {list(OVERRIDABLE)}"
        )
    try:
        return TrainingPolicy.model_validate({**base.model_dump(), **parameters})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise TrainingFailure("invalid_parameters", f"invalid training parameters: {problems}") from None


def ids_fingerprint(example_ids: Sequence[str], feature_set_version: str) -> str:
    """SHA-256 of the feature-set version and the sorted example ids (independent of their order):
    the holdout's fingerprint. The dataset's is the SHA-256 of the training-set file, which covers
    feature values and labels too."""
    h = hashlib.sha256(f"feature_set_version={feature_set_version}\n".encode())
    for example_id in sorted(example_ids):
        h.update(example_id.encode())
        h.update(b"\n")
    return h.hexdigest()


def split_by_time(
    examples: Sequence[Example], holdout_fraction: float, n_holdout: int | None = None
) -> tuple[list[Example], list[Example]]:
    """Oldest part for training, the most recent ``holdout_fraction`` (or ``n_holdout``) as holdout
    (ties by id)."""
    ordered = sorted(examples, key=lambda e: (e.event_time, e.example_id))
    if n_holdout is None:
        n_holdout = max(1, math.ceil(len(ordered) * holdout_fraction))
    n_holdout = min(max(1, n_holdout), len(ordered) - 1)
    return ordered[:-n_holdout], ordered[-n_holdout:]


def feature_matrix(examples: Sequence[Example], names: Sequence[str]) -> np.ndarray:
    """The model's input matrix; TrainingFailure(bad_features) names a non-numeric value."""
    try:
        return model_matrix(examples, names)
    except ValueError as exc:
        raise TrainingFailure("bad_features", f"feature vectors do not fit the model: {exc}") from None


def _profile_matrix(examples: Sequence[Example], names: Sequence[str]) -> np.ndarray:
    """Like feature_matrix, but a value that is not a number is treated as missing."""
    rows = []
    for e in examples:
        row = []
        for n in names:
            v = number(e.features.get(n))
            row.append(float(v) if isinstance(v, int | float) and not isinstance(v, bool) else np.nan)
        rows.append(row)
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), len(names))


def evaluate(model: Any, x: np.ndarray, y: Sequence[str], positive_class: str) -> dict[str, float]:
    """Holdout metrics: accuracy, f1 (positive class), roc_auc and log_loss when defined."""
    y_true = np.asarray([str(v) for v in y])
    predicted = np.asarray([str(v) for v in model.predict(x)])
    is_pos = y_true == positive_class
    metrics: dict[str, float] = {
        "accuracy": float(accuracy_score(y_true, predicted)),
        "f1": float(f1_score(is_pos, predicted == positive_class, zero_division=0)),
    }
    scores = positive_scores(model, x, positive_class)
    if 0 < int(is_pos.sum()) < len(y_true):
        metrics["roc_auc"] = float(roc_auc_score(is_pos, scores))
    classes = [str(c) for c in model.classes_]
    if len(classes) > 1 and set(y_true) <= set(classes):
        metrics["log_loss"] = float(log_loss(y_true, model.predict_proba(x), labels=classes))
    return {k: v for k, v in metrics.items() if math.isfinite(v)}


def jsonable_params(model: Any) -> dict[str, Any]:
    """The estimator's parameters as JSON values (anything else as its text)."""
    out: dict[str, Any] = json.loads(json.dumps(model.get_params(deep=False), default=str, sort_keys=True))
    return out


@dataclass
class FitResult:
    model: Any  # what is stored and served (refitted on every example with ``refit``)
    model_bytes: bytes
    metrics: dict[str, float]
    params: dict[str, Any]
    seed: int
    classes: list[str]
    feature_names: list[str]
    train: list[Example]
    holdout: list[Example]
    dataset_fingerprint: str  # SHA-256 of training_set
    holdout_fingerprint: str
    training_set: bytes  # the examples as a Parquet file (driftline_ml.trainingset)
    reference_profile: dict[str, Any]
    label_counts: dict[str, dict[str, int]]
    fit_seconds: float
    timings: dict[str, float] = field(default_factory=dict)
    # The model fitted on the training split only: the one the holdout metrics and the champion
    # comparison are about (``model`` itself when there is no refit).
    evaluated_model: Any = None
    refit: bool = False

    @property
    def judged(self) -> Any:
        """The model to score on the holdout (never one that trained on it)."""
        return self.model if self.evaluated_model is None else self.evaluated_model

    @property
    def fitted_until(self) -> datetime:
        """Event time of the last example the stored model was fitted on."""
        return (self.holdout if self.refit else self.train)[-1].event_time

    def time_ranges(self) -> dict[str, str]:
        return {
            "train_start": self.train[0].event_time.isoformat(),
            # The stored model's last training example: a later run compares on what comes after.
            "train_end": self.fitted_until.isoformat(),
            "split_train_end": self.train[-1].event_time.isoformat(),
            "holdout_start": self.holdout[0].event_time.isoformat(),
            "holdout_end": self.holdout[-1].event_time.isoformat(),
        }


def check_examples(examples: Sequence[Example], policy: TrainingPolicy) -> None:
    if len(examples) < policy.min_examples:
        raise TrainingFailure(
            "too_few_examples",
            f"{len(examples)} labelled examples selected, the policy needs at least {policy.min_examples}",
            retryable=True,
        )


def fit(
    project: Project, examples: Sequence[Example], policy: TrainingPolicy, *, n_holdout: int | None = None
) -> FitResult:
    """Split by time, fit the project's estimator, evaluate it on the holdout, profile, serialise.
    ``n_holdout``: the holdout's size instead of the policy's fraction (a drift run's window choice)."""
    check_examples(examples, policy)
    timings: dict[str, float] = {}
    train, holdout = split_by_time(examples, policy.holdout_fraction, n_holdout)
    positive = project.label.positive_class
    y_train = [e.label for e in train]
    train_classes = sorted(set(y_train))
    if len(train_classes) < 2:
        raise TrainingFailure(
            "single_class",
            f"the training split has one class only ({train_classes}): a classifier needs at least two",
            retryable=True,
        )
    names = project.model_features
    x_train = feature_matrix(train, names)
    x_holdout = feature_matrix(holdout, names)
    try:
        model = build_estimator(project.model, seed=policy.seed)
    except ValueError as exc:
        raise TrainingFailure("unsupported_estimator", str(exc)) from None
    started = time.perf_counter()
    try:
        model.fit(x_train, np.asarray(y_train))
    except (ValueError, TypeError) as exc:
        raise TrainingFailure("fit_error", f"{project.model.estimator}.fit failed: {exc}") from None
    fit_seconds = time.perf_counter() - started
    timings["fit_s"] = fit_seconds

    started = time.perf_counter()
    metrics = evaluate(model, x_holdout, [e.label for e in holdout], positive)
    timings["evaluate_s"] = time.perf_counter() - started

    started = time.perf_counter()
    all_names = project.features.names
    reference: dict[str, Any] = {
        "features": build_profiles(_profile_matrix(train, all_names), all_names, project.features.categorical),
        # Scores on the holdout: out of sample, as the model's scores will be in production.
        "score": numeric_profile(positive_scores(model, x_holdout, positive)),
    }
    timings["profile_s"] = time.perf_counter() - started

    evaluated = model
    if policy.refit:
        started = time.perf_counter()
        model = build_estimator(project.model, seed=policy.seed)
        try:
            model.fit(np.vstack([x_train, x_holdout]), np.asarray(y_train + [e.label for e in holdout]))
        except (ValueError, TypeError) as exc:
            raise TrainingFailure("fit_error", f"{project.model.estimator}.fit (refit) failed: {exc}") from None
        timings["refit_s"] = time.perf_counter() - started
        # The score profile above is the split model's: the stored model scores differently, and
        # it has no out-of-sample scores (it saw the holdout). Monitoring takes the stored model's
        # reference scores from its first served window instead ("score_reference").
        reference["score_reference"] = "first_served_window"

    started = time.perf_counter()
    model_bytes = dump_model(model)
    try:
        # Never announce a file that nobody could load: check it against the trusted-types list now.
        trusted_types_for(model_bytes)
    except UnsafeArtifactError as exc:
        raise TrainingFailure("unsafe_model", f"the fitted {project.model.estimator} cannot be stored: {exc}") from None
    timings["dump_s"] = time.perf_counter() - started

    started = time.perf_counter()
    fsv = project.features.version
    training_set = write_training_set(train, holdout, feature_set_version=fsv)
    timings["training_set_s"] = time.perf_counter() - started

    params = jsonable_params(model)
    random_state = params.get("random_state")
    return FitResult(
        model=model,
        model_bytes=model_bytes,
        metrics=metrics,
        params=params,
        seed=random_state if isinstance(random_state, int) else policy.seed,
        classes=[str(c) for c in model.classes_],
        feature_names=list(names),
        train=train,
        holdout=holdout,
        dataset_fingerprint=hashlib.sha256(training_set).hexdigest(),
        holdout_fingerprint=ids_fingerprint([e.example_id for e in holdout], fsv),
        training_set=training_set,
        reference_profile=reference,
        label_counts={
            "train": dict(sorted(Counter(y_train).items())),
            "holdout": dict(sorted(Counter(e.label for e in holdout).items())),
        },
        fit_seconds=fit_seconds,
        timings=timings,
        evaluated_model=evaluated if policy.refit else None,
        refit=policy.refit,
    )


def comparison_set(
    holdout: Sequence[Example],
    champion_train_end: datetime | None,
    *,
    recent: float = 1.0,
    minimum: int = 0,
) -> list[Example]:
    """The holdout examples a champion did not train on: those after the end of its training data;
    of those, the most recent ``recent`` fraction (at least ``minimum``, when there are that many).

    ``champion_train_end`` is the event time of the champion's last training example (its
    metadata's ``selection.train_end``); None (unknown) keeps the whole holdout. ``recent`` < 1 is
    for drift runs: during a transition the older part of the holdout still mixes the concepts,
    and the candidate must be judged on the concept it will serve (see docs/architecture.md).
    """
    unseen = list(holdout) if champion_train_end is None else [e for e in holdout if e.event_time > champion_train_end]
    if recent >= 1.0:
        return unseen
    keep = max(minimum, math.ceil(recent * len(unseen)))
    return unseen[-keep:] if keep < len(unseen) else unseen


def paired_counts(
    candidate: Any,
    candidate_features: Sequence[str],
    champion: Any,
    champion_features: Sequence[str],
    examples: Sequence[Example],
) -> tuple[int, int]:
    """(wins, losses) of the candidate against the champion on the same examples: those only the
    candidate predicts right, and those only the champion does (the discordant pairs of McNemar's
    test; examples both get right or both get wrong say nothing about which is better)."""
    y = np.asarray([str(e.label) for e in examples])
    right_candidate = np.asarray([str(p) for p in candidate.predict(feature_matrix(examples, candidate_features))]) == y
    right_champion = np.asarray([str(p) for p in champion.predict(feature_matrix(examples, champion_features))]) == y
    return int(np.sum(right_candidate & ~right_champion)), int(np.sum(right_champion & ~right_candidate))


def evaluate_on_holdout(
    model: Any, holdout: Sequence[Example], feature_names: Sequence[str], positive_class: str
) -> dict[str, float]:
    """Metrics of another model (the champion) on the same holdout, with its own input columns."""
    x = feature_matrix(holdout, feature_names)
    return evaluate(model, x, [e.label for e in holdout], positive_class)
