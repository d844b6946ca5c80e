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
import json
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
    """The model as a skops file whose bytes depend on the model only (:func:`canonical_skops`)."""
    import skops.io as sio

    return canonical_skops(bytes(sio.dumps(model)))


_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def canonical_skops(data: bytes) -> bytes:
    """A skops file rewritten so that equal models give equal bytes.

    skops names each object by its ``id()`` (a memory address: ``__id__`` in schema.json and the
    ``<id>.npy`` member of each array) and stamps every zip member with the time of writing, so
    two dumps of one model differ. Here the ids are renumbered in the order schema.json lists
    them (the same id keeps one number, so shared objects stay shared), members are written in
    name order with a fixed time, and schema.json with sorted keys. skops reads it as before: it
    looks members up by the names schema.json gives.
    """
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist()}
        compression = {info.filename: info.compress_type for info in archive.infolist()}
    schema = json.loads(members.pop("schema.json"))
    numbers: dict[str, int] = {}

    def renumber(old: str) -> int:
        return numbers.setdefault(old, len(numbers) + 1)

    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(v) for v in node]
        if not isinstance(node, dict):
            return node
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key == "__id__" and isinstance(value, int):
                out[key] = renumber(str(value))
            elif key == "file" and isinstance(value, str) and value.endswith(".npy") and value[:-4].isdigit():
                out[key] = f"{renumber(value[:-4])}.npy"
            else:
                out[key] = walk(value)
        return out

    canonical = walk(schema)
    renamed = {"schema.json": json.dumps(canonical, sort_keys=True, indent=2).encode()}
    types = {"schema.json": compression.get("schema.json", zipfile.ZIP_STORED)}
    for name, payload in members.items():
        stem = name[:-4]
        new_name = f"{numbers[stem]}.npy" if name.endswith(".npy") and stem in numbers else name
        renamed[new_name] = payload
        types[new_name] = compression[name]
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name in sorted(renamed):
            info = zipfile.ZipInfo(name, date_time=_ZIP_EPOCH)
            info.compress_type = types[name]
            info.external_attr = 0o644 << 16
            archive.writestr(info, renamed[name])
    return out.getvalue()


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
