"""Reference profiles and the drift statistics computed against them.

Training writes, in the model's metadata, a profile of every feature and of the prediction
score on its training data; monitoring compares recent windows to it:

* numeric: decile bin edges + frequencies (for PSI) and a quantile sketch (for a two-sample KS);
* categorical: category frequencies (for PSI).

Profiles are plain JSON so any reader (monitoring, a notebook) can use them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

EPS = 1e-4


def numeric_profile(values: Sequence[float] | np.ndarray, *, bins: int = 10, sketch: int = 500) -> dict[str, Any]:
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    if v.size == 0:
        return {"kind": "numeric", "edges": [], "frequencies": [], "count": 0, "sketch": []}
    inner = np.unique(np.quantile(v, np.linspace(0, 1, bins + 1)[1:-1]))
    counts = np.bincount(np.searchsorted(inner, v, side="right"), minlength=inner.size + 1)
    return {
        "kind": "numeric",
        "edges": inner.tolist(),  # inner edges; the outer bins are open-ended
        "frequencies": (counts / v.size).tolist(),
        "count": int(v.size),
        "sketch": np.quantile(v, np.linspace(0, 1, sketch)).tolist(),
        "mean": float(v.mean()),
        "std": float(v.std()),
    }


def category_key(x: Any) -> str | None:
    """Category of a value: numeric codes (2.0) are keyed by their integer text ("2")."""
    if x is None:
        return None
    if isinstance(x, float | np.floating):
        if np.isnan(x):
            return None
        return str(int(x)) if float(x).is_integer() else str(x)
    return str(x)


def categorical_profile(values: Sequence[Any]) -> dict[str, Any]:
    keys = [k for k in map(category_key, values) if k is not None]
    tally: dict[str, int] = {}
    for k in keys:
        tally[k] = tally.get(k, 0) + 1
    cats = sorted(tally)
    total = max(1, len(keys))
    return {
        "kind": "categorical",
        "categories": cats,
        "frequencies": [tally[c] / total for c in cats],
        "count": len(keys),
    }


def build_profiles(
    matrix: np.ndarray, feature_names: Sequence[str], categorical: Sequence[str] = ()
) -> dict[str, dict[str, Any]]:
    out = {}
    for j, name in enumerate(feature_names):
        column = matrix[:, j]
        out[name] = categorical_profile(column.tolist()) if name in categorical else numeric_profile(column)
    return out


def observed_frequencies(profile: dict[str, Any], values: Sequence[Any]) -> np.ndarray:
    if profile["kind"] == "numeric":
        v = np.asarray(values, dtype=np.float64)
        v = v[~np.isnan(v)]
        bins = np.bincount(
            np.searchsorted(np.asarray(profile["edges"]), v, side="right"), minlength=len(profile["frequencies"])
        )
        return np.asarray(bins / max(1, v.size), dtype=np.float64)
    index = {c: i for i, c in enumerate(profile["categories"])}
    counts = np.zeros(len(index) + 1)  # last slot: categories never seen in training
    n = 0
    for x in values:
        key = category_key(x)
        if key is None:
            continue
        counts[index.get(key, len(index))] += 1
        n += 1
    return counts / max(1, n)


def psi(profile: dict[str, Any], values: Sequence[Any]) -> float:
    """Population stability index of ``values`` against the reference profile."""
    expected = np.asarray(profile["frequencies"], dtype=np.float64)
    actual = observed_frequencies(profile, values)
    if profile["kind"] == "categorical":
        expected = np.append(expected, 0.0)
    e = np.clip(expected, EPS, None)
    a = np.clip(actual, EPS, None)
    return float(np.sum((a - e) * np.log(a / e)))


def ks(profile: dict[str, Any], values: Sequence[float]) -> tuple[float, float]:
    """Two-sample KS statistic and p-value of ``values`` against the reference sketch.

    The sketch stands in for ``count`` reference points, so the p-value uses the real sizes.
    """
    ref = np.asarray(profile["sketch"], dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    if ref.size == 0 or v.size == 0:
        return 0.0, 1.0
    statistic = float(stats.ks_2samp(ref, v).statistic)
    n, m = profile.get("count", ref.size), v.size
    p_value = float(stats.kstwo.sf(statistic, round(n * m / (n + m))))
    return statistic, p_value
