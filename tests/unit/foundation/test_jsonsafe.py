"""Non-finite numbers never reach JSON as NaN/Infinity (PostgreSQL's jsonb refuses them)."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from driftline import jsonsafe

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5),
)
documents = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=4), inner, max_size=4)),
    max_leaves=20,
)


def strict_loads(text: str) -> Any:
    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} in {text}")

    return json.loads(text, parse_constant=refuse)


def same_but_finite(original: Any, loaded: Any) -> None:
    if isinstance(original, float) and not isinstance(original, bool):
        assert loaded == (original if math.isfinite(original) else None)
    elif isinstance(original, dict):
        assert set(loaded) == set(original)
        for k, v in original.items():
            same_but_finite(v, loaded[k])
    elif isinstance(original, list | tuple):
        assert len(loaded) == len(original)
        for a, b in zip(original, loaded, strict=True):
            same_but_finite(a, b)
    else:
        assert loaded == original


@given(documents)
def test_every_document_is_strict_json_with_non_finite_numbers_as_null(doc: Any) -> None:
    same_but_finite(doc, strict_loads(jsonsafe.dumps(doc)))


def test_numpy_scalars_and_what_default_converts_are_sanitised_too() -> None:
    doc = {"ph": np.float64("-inf"), "f32": np.float32("nan"), "n": np.int64(3), "at": datetime(2026, 1, 1, tzinfo=UTC)}
    out = strict_loads(jsonsafe.dumps(doc, default=lambda x: float("inf") if isinstance(x, np.float32) else str(x)))
    assert out["ph"] is None and out["f32"] is None and out["at"].startswith("2026-01-01")
