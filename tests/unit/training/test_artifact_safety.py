"""A model file that would build anything outside scikit-learn/NumPy is refused before loading."""

from __future__ import annotations

import pytest
import skops.io as sio
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import FunctionTransformer

from driftline.models import UnsafeArtifactError, dump_model, load_model


def _evil(x: object) -> object:  # stands for any function an attacker would reference
    return x


def test_a_model_file_referencing_a_foreign_function_is_refused() -> None:
    data = bytes(sio.dumps(FunctionTransformer(_evil)))
    with pytest.raises(UnsafeArtifactError, match="untrusted types"):
        load_model(data)


def test_a_plain_scikit_learn_model_loads() -> None:
    model = LogisticRegression().fit([[0.0], [1.0], [2.0], [3.0]], ["deny", "deny", "approve", "approve"])
    loaded = load_model(dump_model(model))
    assert list(loaded.predict([[0.0], [3.0]])) == ["deny", "approve"]
