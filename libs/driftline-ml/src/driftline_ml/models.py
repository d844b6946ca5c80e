"""Models as safe artifacts: skops files loaded against an explicit list of trusted types.

Never pickle, and no wildcard: :func:`load_model` lists **every** type a skops file would build
(walking the file's whole tree, including the types skops itself trusts by default, such as any
scikit-learn estimator or NumPy ufunc) and loads it only when each one is in
:data:`TRUSTED_TYPES`: the estimator classes a project file may name (:data:`SUPPORTED_ESTIMATORS`),
the internal types their fitted state holds, and a few NumPy types. Anything else (a function
such as ``numpy.exp`` inside a ``FunctionTransformer``, a pipeline, a custom class) is refused
before a single object is built. Also: building the estimator from the project file, and turning
feature vectors into the model's input matrix.
"""

from __future__ import annotations

import importlib
import io
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from driftline.project import ModelSpec

# skops is imported where it is used: importing it imports every scikit-learn estimator module
# (~2.5 s of CPU), which a process that only scores (deployment's server, which receives its
# estimators already built from its loader process) never needs. See :func:`preload`.

# Type names as skops reports them (defining module + class) for scikit-learn 1.9. A scikit-learn
# upgrade that moves one of them makes the unit tests that fit and load every supported
# estimator fail, rather than loosening the policy.
_CONTAINERS = frozenset({"builtins.dict", "builtins.list", "builtins.tuple", "builtins.str"})
_NUMPY = frozenset({"numpy.ndarray", "numpy.float64", "numpy.int64", "numpy.uint64"})
_TREE = frozenset({"sklearn.tree._tree.Tree"})
_LOSSES = frozenset(
    {
        "sklearn._loss.loss.HalfBinomialLoss",
        "sklearn._loss.loss.HalfMultinomialLoss",
        "sklearn._loss._loss.CyHalfBinomialLoss",
        "sklearn._loss._loss.CyHalfMultinomialLoss",
        "sklearn._loss.link.Interval",
        "sklearn._loss.link.LogitLink",
        "sklearn._loss.link.MultinomialLogit",
    }
)

# The estimators a project file may name (``model.estimator``), each with the types its fitted
# state contains. skops does not trust the tree structures (``Tree``, ``TreePredictor``) by
# default because their index arrays are not bounds-checked; here they are only ever loaded from
# bytes whose SHA-256 matched the digest announced by training (driftline.artifacts).
SUPPORTED_ESTIMATORS: Mapping[str, frozenset[str]] = {
    "sklearn.ensemble.HistGradientBoostingClassifier": frozenset(
        {
            "sklearn.ensemble._hist_gradient_boosting.gradient_boosting.HistGradientBoostingClassifier",
            "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
            "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
            "sklearn.preprocessing._label.LabelEncoder",
            "numpy.random._generator.Generator",
        }
    )
    | _LOSSES,
    "sklearn.linear_model.LogisticRegression": frozenset({"sklearn.linear_model._logistic.LogisticRegression"}),
    "sklearn.ensemble.RandomForestClassifier": frozenset(
        {"sklearn.ensemble._forest.RandomForestClassifier", "sklearn.tree._classes.DecisionTreeClassifier"}
    )
    | _TREE,
    "sklearn.ensemble.ExtraTreesClassifier": frozenset(
        {"sklearn.ensemble._forest.ExtraTreesClassifier", "sklearn.tree._classes.ExtraTreeClassifier"}
    )
    | _TREE,
    "sklearn.ensemble.GradientBoostingClassifier": frozenset(
        {
            "sklearn.ensemble._gb.GradientBoostingClassifier",
            "sklearn.tree._classes.DecisionTreeRegressor",
            "sklearn.dummy.DummyClassifier",
            "numpy.random.mtrand.RandomState",
        }
    )
    | _TREE
    | _LOSSES,
    "sklearn.tree.DecisionTreeClassifier": frozenset({"sklearn.tree._classes.DecisionTreeClassifier"}) | _TREE,
}

TRUSTED_TYPES: frozenset[str] = frozenset().union(_CONTAINERS, _NUMPY, *SUPPORTED_ESTIMATORS.values())


class UnsafeArtifactError(Exception):
    """The model file would build types outside the trusted set (or cannot be audited)."""


def build_estimator(spec: ModelSpec, *, seed: int | None = None) -> Any:
    """A fresh, unfitted estimator from the project's model spec (one of SUPPORTED_ESTIMATORS)."""
    if spec.estimator not in SUPPORTED_ESTIMATORS:
        raise ValueError(
            f"estimator {spec.estimator} is not supported: a model file must load under the trusted-types "
            f"list, which covers {sorted(SUPPORTED_ESTIMATORS)}"
        )
    module_name, _, class_name = spec.estimator.rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    params = dict(spec.params)
    if seed is not None and "random_state" in cls().get_params():
        params.setdefault("random_state", seed)
    return cls(**params)


def preload() -> None:
    """Import what loading a model file needs (skops and, through it, scikit-learn) now, so the
    first load does not pay for it."""
    import skops.io
    import skops.io._audit  # noqa: F401


def dump_model(model: Any) -> bytes:
    import skops.io as sio

    return bytes(sio.dumps(model))


def types_in(data: bytes) -> set[str]:
    """Every type (and function) a skops file would build, whether skops trusts it by default or not.

    Reads the file's schema into skops' node tree, which imports and builds nothing, and walks all
    of it the way skops' own audit does, without its default trust.
    """
    from skops.io._audit import Node, get_tree
    from skops.io._utils import read_schema

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            schema, load_context = read_schema(archive)
            tree = get_tree(schema, load_context=load_context, trusted=None)
    except Exception as exc:
        raise UnsafeArtifactError(f"not a readable skops file ({exc!r:.200}): refusing to load it") from None
    found: set[str] = set()
    seen: set[int] = set()
    stack: list[Any] = [tree]
    while stack:
        node = stack.pop()
        if node is None or isinstance(node, io.BytesIO | str):
            continue  # raw array bytes / plain strings: data, not types
        if isinstance(node, list):
            stack.extend(node)
            continue
        if isinstance(node, dict):
            stack.extend(node.values())
            continue
        if type(node) is type:
            found.add(f"{node.__module__}.{node.__name__}")
            continue
        if not isinstance(node, Node):
            raise UnsafeArtifactError(f"model file holds a {type(node).__name__} node that cannot be audited")
        if id(node) in seen:
            continue
        seen.add(id(node))
        found.add(f"{node.module_name}.{node.class_name}")
        stack.extend(node.children.values())
    return found


def trusted_types_for(data: bytes) -> list[str]:
    """The types the file needs, if all are in TRUSTED_TYPES; raises UnsafeArtifactError otherwise."""
    needed = types_in(data)
    refused = sorted(needed - TRUSTED_TYPES)
    if refused:
        raise UnsafeArtifactError(f"model file needs untrusted types {refused}: refusing to load it")
    return sorted(needed)


def load_model(data: bytes) -> Any:
    """Load a skops model file under the trusted-types list (blocking: run it off the loop)."""
    import skops.io as sio

    return sio.loads(data, trusted=trusted_types_for(data))


def to_matrix(vectors: Iterable[Mapping[str, Any]], feature_names: Sequence[str]) -> np.ndarray:
    """Rows of features (by name) → a float matrix; missing values become NaN.

    Raises ValueError naming the feature when a value is not a number, or an integer too large
    for a float64.
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
            try:
                row.append(float(value))
            except OverflowError:  # an integer beyond float64 (JSON numbers have no bound)
                bits = int(value).bit_length()
                raise ValueError(
                    f"row {i}: feature {name!r} is too large for a float64 (an integer of {bits} bits)"
                ) from None
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
