"""Models as safe artifacts: skops files loaded with an explicit trusted-types policy.

Never pickle: :func:`load_model` asks skops which types the file would instantiate and loads it
only when every one of them is a scikit-learn or NumPy type; anything else is refused before a
single object is built. Also: building the estimator from the project file, and turning feature
vectors into the model's input matrix.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import skops.io as sio

from driftline.project import ModelSpec

# Modules whose types a model file may contain. Deliberately narrow: a file that needs anything
# else (a custom class, a function reference) is refused.
TRUSTED_MODULE_PREFIXES = ("sklearn.", "numpy.", "scipy.sparse.")


class UnsafeArtifactError(Exception):
    """The model file would instantiate types outside the trusted set."""


def build_estimator(spec: ModelSpec, *, seed: int | None = None) -> Any:
    """A fresh, unfitted estimator from the project's model spec."""
    module_name, _, class_name = spec.estimator.rpartition(".")
    if not module_name.startswith("sklearn"):
        raise ValueError(f"estimator {spec.estimator} is not a scikit-learn class")
    cls = getattr(importlib.import_module(module_name), class_name)
    params = dict(spec.params)
    if seed is not None and "random_state" in cls().get_params():
        params.setdefault("random_state", seed)
    return cls(**params)


def dump_model(model: Any) -> bytes:
    return bytes(sio.dumps(model))


def trusted_types_for(data: bytes) -> list[str]:
    """The types the file needs, if all are trusted; raises UnsafeArtifactError otherwise."""
    needed = sio.get_untrusted_types(data=data)
    refused = [t for t in needed if not t.startswith(TRUSTED_MODULE_PREFIXES)]
    if refused:
        raise UnsafeArtifactError(f"model file needs untrusted types {refused}: refusing to load it")
    return list(needed)


def load_model(data: bytes) -> Any:
    """Load a skops model file under the trusted-types policy (blocking: run it off the loop)."""
    return sio.loads(data, trusted=trusted_types_for(data))


def to_matrix(vectors: Iterable[Mapping[str, Any]], feature_names: Sequence[str]) -> np.ndarray:
    """Rows of features (by name) → a float matrix; missing values become NaN.

    Raises ValueError naming the feature when a value is not a number.
    """
    rows = []
    for i, vec in enumerate(vectors):
        row = []
        for name in feature_names:
            value = vec.get(name)
            if value is None:
                row.append(np.nan)
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"row {i}: feature {name!r} must be a number, got {type(value).__name__}")
            row.append(float(value))
        rows.append(row)
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), len(feature_names))


def positive_scores(model: Any, x: np.ndarray, positive_class: str) -> np.ndarray:
    """Probability of the positive class for each row."""
    proba = model.predict_proba(x)
    classes = [str(c) for c in model.classes_]
    if positive_class not in classes:
        # A model trained on one class only cannot score the other; the registry refuses those.
        return np.zeros(len(x)) if len(classes) == 1 else proba[:, -1]
    return np.asarray(proba[:, classes.index(positive_class)])
