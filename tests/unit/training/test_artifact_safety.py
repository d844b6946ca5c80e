"""A model file is loaded only when every type it would build is on the explicit trusted list."""

from __future__ import annotations

import time

import numpy as np
import pytest
import skops.io as sio
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from driftline.project import ModelSpec, load_project
from driftline_ml.models import (
    SUPPORTED_ESTIMATORS,
    TRUSTED_TYPES,
    UnsafeArtifactError,
    build_estimator,
    dump_model,
    load_model,
)


def _evil(x: object) -> object:  # stands for any function an attacker would reference
    return x


def test_a_model_file_referencing_a_foreign_function_is_refused() -> None:
    data = bytes(sio.dumps(FunctionTransformer(_evil)))
    with pytest.raises(UnsafeArtifactError, match="untrusted types"):
        load_model(data)


@pytest.mark.parametrize("func", [np.exp, np.add.reduce, np.load], ids=["ufunc", "ufunc-method", "function"])
def test_a_numpy_function_inside_a_function_transformer_is_refused(func: object) -> None:
    # skops trusts FunctionTransformer and NumPy ufuncs by default: a prefix or default policy
    # would load this file and call the function on the model's input.
    data = bytes(sio.dumps(FunctionTransformer(func)))
    with pytest.raises(UnsafeArtifactError, match="untrusted types") as info:
        load_model(data)
    assert "FunctionTransformer" in str(info.value)


def test_a_pipeline_around_a_trusted_estimator_is_refused() -> None:
    model = make_pipeline(FunctionTransformer(np.log1p), LogisticRegression())
    model.fit([[0.0], [1.0], [2.0], [3.0]], ["deny", "deny", "approve", "approve"])
    with pytest.raises(UnsafeArtifactError, match="Pipeline"):
        load_model(dump_model(model))


def test_a_file_that_is_not_a_skops_archive_is_refused() -> None:
    with pytest.raises(UnsafeArtifactError, match="not a readable skops file"):
        load_model(b"\x80\x04not a zip")


def test_the_trusted_list_names_types_not_modules() -> None:
    assert all(not t.endswith(".") and t.count(".") >= 1 for t in TRUSTED_TYPES)
    assert "sklearn.preprocessing._function_transformer.FunctionTransformer" not in TRUSTED_TYPES
    assert not {"numpy.exp", "builtins.eval", "functools.partial"} & TRUSTED_TYPES


def _data(n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 4))
    classes = np.asarray(["deny", "approve", "maybe"][:n_classes])
    y = classes[(x[:, 0] > 0).astype(int) + ((x[:, 1] > 0.5) & (n_classes > 2)).astype(int)]
    return x, y


@pytest.mark.parametrize("n_classes", [2, 3])
@pytest.mark.parametrize("estimator", sorted(SUPPORTED_ESTIMATORS))
def test_every_estimator_a_project_can_name_loads(estimator: str, n_classes: int) -> None:
    x, y = _data(n_classes)
    params: dict[str, object] = {}
    if estimator.endswith(("RandomForestClassifier", "ExtraTreesClassifier", ".GradientBoostingClassifier")):
        params = {"n_estimators": 5}
    if estimator.endswith("HistGradientBoostingClassifier"):
        params = {"max_iter": 10, "early_stopping": True, "validation_fraction": 0.2}
        x[::13, 2] = np.nan
    model = build_estimator(ModelSpec(name="m", estimator=estimator, params=params), seed=1).fit(x, y)
    loaded = load_model(dump_model(model))
    assert (loaded.predict_proba(x) == model.predict_proba(x)).all()


def test_the_project_estimator_is_supported_and_loads() -> None:
    project = load_project()
    assert project.model.estimator in SUPPORTED_ESTIMATORS
    x, y = _data(2)
    model = build_estimator(project.model.model_copy(update={"params": {"max_iter": 5}}), seed=1).fit(x, y)
    assert list(load_model(dump_model(model)).predict(x[:5])) == list(model.predict(x[:5]))


def test_an_estimator_outside_the_supported_list_is_refused_when_built() -> None:
    with pytest.raises(ValueError, match="not supported"):
        build_estimator(ModelSpec(name="m", estimator="sklearn.svm.SVC"))


def test_a_plain_scikit_learn_model_loads() -> None:
    model = LogisticRegression().fit([[0.0], [1.0], [2.0], [3.0]], ["deny", "deny", "approve", "approve"])
    loaded = load_model(dump_model(model))
    assert list(loaded.predict([[0.0], [3.0]])) == ["deny", "approve"]


def test_equal_models_give_equal_model_files_that_load_as_the_model() -> None:
    # skops names objects by their memory address and stamps the time of writing: dump_model
    # renumbers and unstamps, so a re-fit in the same environment can prove identical bytes.
    rng = np.random.default_rng(0)
    x, y = rng.uniform(size=(200, 3)), np.asarray(["a", "b"] * 100)
    first = RandomForestClassifier(n_estimators=5, random_state=1).fit(x, y)
    blob = dump_model(first)
    time.sleep(2.1)  # zip member times have a 2 s resolution: cross at least one step
    assert dump_model(RandomForestClassifier(n_estimators=5, random_state=1).fit(x, y)) == blob
    assert dump_model(RandomForestClassifier(n_estimators=5, random_state=2).fit(x, y)) != blob
    assert (load_model(blob).predict_proba(x) == first.predict_proba(x)).all()
