"""Re-fit a recorded run in this environment and compare it with the model it produced.

The inputs are the run's metadata document, its training set (:mod:`driftline_ml.trainingset`)
and its model file, each already checked against the digest the run announced. The re-fit takes
the same steps as the training service (``driftline_training.pipeline.fit``): build the recorded
estimator with the recorded parameters and seed, fit it on the training split, and with ``refit``
fit a fresh one on both splits; the comparison is on the recorded holdout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from driftline.project import ModelSpec
from driftline_ml.models import build_estimator, dump_model, load_model
from driftline_ml.provenance import library_versions, version_differences
from driftline_ml.trainingset import TrainingSet, model_matrix


@dataclass
class Reproduction:
    """What re-fitting a run gave, next to what the run recorded."""

    run_id: str
    n_train: int
    n_holdout: int
    refit: bool
    predictions_identical: bool  # the new model's holdout labels equal the stored model's
    probabilities_identical: bool  # and so are its holdout probabilities, bit for bit
    n_predictions_differ: int
    max_probability_difference: float | None  # None when the two disagree on the classes
    model_bytes_identical: bool  # the new skops file has the recorded artifact's SHA-256
    recorded_model_sha256: str
    new_model_sha256: str
    recorded_accuracy: float | None  # the run's holdout accuracy (its split model)
    new_accuracy: float  # the re-fitted split model's, on the same holdout
    library_differences: dict[str, tuple[str, str]] = field(default_factory=dict)

    @property
    def identical(self) -> bool:
        return self.predictions_identical and self.probabilities_identical

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "n_train": self.n_train,
            "n_holdout": self.n_holdout,
            "refit": self.refit,
            "predictions_identical": self.predictions_identical,
            "probabilities_identical": self.probabilities_identical,
            "n_predictions_differ": self.n_predictions_differ,
            "max_probability_difference": self.max_probability_difference,
            "model_bytes_identical": self.model_bytes_identical,
            "recorded_model_sha256": self.recorded_model_sha256,
            "new_model_sha256": self.new_model_sha256,
            "recorded_accuracy": self.recorded_accuracy,
            "new_accuracy": self.new_accuracy,
            "library_differences": {k: {"recorded": a, "current": b} for k, (a, b) in self.library_differences.items()},
        }


def recorded_refit(metadata: dict[str, Any]) -> bool:
    """Whether the stored model was refitted on the holdout too (older metadata: its training
    data ends where the holdout ends)."""
    if "refit" in metadata:
        return bool(metadata["refit"])
    selection = metadata.get("selection") or {}
    return bool(selection.get("train_end")) and selection.get("train_end") == selection.get("holdout_end")


def model_spec(metadata: dict[str, Any]) -> ModelSpec:
    """The estimator as the run built it: the project's spec when recorded, else every
    parameter the fitted estimator reported."""
    spec = metadata.get("estimator_spec") or {"estimator": metadata["estimator"], "params": metadata["params"]}
    return ModelSpec(name=metadata["model_name"], estimator=spec["estimator"], params=dict(spec.get("params") or {}))


def _fit(spec: ModelSpec, seed: int | None, x: np.ndarray, y: list[str]) -> Any:
    model = build_estimator(spec, seed=seed)
    model.fit(x, np.asarray(y))
    return model


def reproduce(
    metadata: dict[str, Any], training_set: TrainingSet, model_bytes: bytes, *, model_sha256: str
) -> Reproduction:
    """Re-fit the run of ``metadata`` on ``training_set`` and compare with its model (blocking)."""
    from driftline.artifacts import sha256_hex

    names = list(metadata["feature_names"])
    spec, seed, refit = model_spec(metadata), metadata.get("seed"), recorded_refit(metadata)
    train, holdout = training_set.train, training_set.holdout
    x_train, x_holdout = model_matrix(train, names), model_matrix(holdout, names)
    y_train, y_holdout = [r.label for r in train], [r.label for r in holdout]
    split_model = _fit(spec, seed, x_train, y_train)
    final = _fit(spec, seed, np.vstack([x_train, x_holdout]), y_train + y_holdout) if refit else split_model
    new_bytes = dump_model(final)
    recorded = load_model(model_bytes)

    old_labels = np.asarray([str(p) for p in recorded.predict(x_holdout)])
    new_labels = np.asarray([str(p) for p in final.predict(x_holdout)])
    old_proba, new_proba = recorded.predict_proba(x_holdout), final.predict_proba(x_holdout)
    same_shape = old_proba.shape == new_proba.shape
    split_labels = np.asarray([str(p) for p in split_model.predict(x_holdout)])
    recorded_accuracy = (metadata.get("metrics") or {}).get("accuracy")
    return Reproduction(
        run_id=str(metadata["run_id"]),
        n_train=len(train),
        n_holdout=len(holdout),
        refit=refit,
        predictions_identical=bool(np.array_equal(old_labels, new_labels)),
        probabilities_identical=same_shape and bool(np.array_equal(old_proba, new_proba)),
        n_predictions_differ=int(np.sum(old_labels != new_labels)),
        max_probability_difference=(
            float(np.max(np.abs(old_proba - new_proba))) if same_shape and len(x_holdout) else None
        ),
        model_bytes_identical=sha256_hex(new_bytes) == model_sha256,
        recorded_model_sha256=model_sha256,
        new_model_sha256=sha256_hex(new_bytes),
        recorded_accuracy=None if recorded_accuracy is None else float(recorded_accuracy),
        new_accuracy=float(np.mean(split_labels == np.asarray(y_holdout))) if y_holdout else float("nan"),
        library_differences=version_differences(metadata.get("library_versions") or {}, library_versions()),
    )
