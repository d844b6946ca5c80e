"""Served scores: the fast path (treelite) computes what scikit-learn computes, and is used only
where it is faster."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from sklearn.ensemble import (
    ExtraTreesClassifier,
    GradientBoostingClassifier,
    HistGradientBoostingClassifier,
    RandomForestClassifier,
)
from sklearn.linear_model import LogisticRegression
from sklearn.tree import DecisionTreeClassifier

from driftline_deployment.scoring import VERIFY_CALLS, Scores, profile_rows, scores_for
from driftline_ml.models import positive_scores
from driftline_ml.profiles import build_profiles

ESTIMATORS = {
    "hgb": lambda: HistGradientBoostingClassifier(max_iter=60, random_state=0),
    "rf": lambda: RandomForestClassifier(n_estimators=40, max_depth=8, random_state=0),
    "extra": lambda: ExtraTreesClassifier(n_estimators=40, max_depth=8, random_state=0),
    "gb": lambda: GradientBoostingClassifier(n_estimators=40, random_state=0),
    "logreg": lambda: LogisticRegression(),
    "tree": lambda: DecisionTreeClassifier(max_depth=6, random_state=0),
}
TREELITE_TYPES = {"hgb", "rf", "extra", "gb"}


def data(seed: int, n: int = 1500, nan_share: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)) * [1, 10, 100, 0.1, 1, 1000]
    y = np.where(x[:, 0] + x[:, 1] / 10 + rng.normal(scale=0.5, size=n) > 0, "approved", "rejected")
    if nan_share:
        x[rng.random(x.shape) < nan_share] = np.nan
    return x, y


def fitted(kind: str, seed: int = 0, nan_share: float = 0.0) -> Any:
    x, y = data(seed, nan_share=nan_share)
    return ESTIMATORS[kind]().fit(x, y)


@pytest.mark.parametrize("kind", sorted(ESTIMATORS))
@pytest.mark.parametrize("positive", ["approved", "rejected"])
def test_scores_are_scikit_learns_for_every_batch_size(kind: str, positive: str) -> None:
    nan_share = 0.05 if kind == "hgb" else 0.0  # the one supported estimator that takes missing values
    model = fitted(kind, nan_share=nan_share)
    scores = scores_for(model, positive, 6)
    assert scores.fast == (kind in TREELITE_TYPES)
    x, _ = data(seed=1, n=400, nan_share=nan_share)
    for n in (1, 2, 7, 31, 64, 255, 400):
        got = scores(x[:n])
        want = positive_scores(model, x[:n], positive)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    assert scores.fast == (kind in TREELITE_TYPES)  # every verification call agreed


def test_the_fast_path_takes_the_small_batches_and_scikit_learn_the_large() -> None:
    scores = scores_for(fitted("hgb"), "approved", 6)
    assert 1 < scores.fast_below <= 257
    calls: list[int] = []
    tree = scores._tree_scores
    scores._tree_scores = lambda x: calls.append(len(x)) or tree(x)  # type: ignore[method-assign]
    x, _ = data(seed=2, n=600)
    scores(x[:1])
    scores(x[: scores.fast_below])
    assert calls == [1]


def test_a_fast_path_that_disagrees_with_scikit_learn_is_dropped_for_good() -> None:
    model = fitted("rf")
    scores = scores_for(model, "approved", 6)
    assert scores.fast
    tree = scores._tree_scores
    scores._tree_scores = lambda x: tree(x) + 0.01  # type: ignore[method-assign]
    x, _ = data(seed=3, n=10)
    np.testing.assert_allclose(scores(x[:3]), positive_scores(model, x[:3], "approved"))  # the reference
    assert not scores.fast
    np.testing.assert_allclose(scores(x), positive_scores(model, x, "approved"))


def test_verification_stops_after_its_calls() -> None:
    model = fitted("hgb")
    scores = scores_for(model, "approved", 6)
    x, _ = data(seed=4, n=5)
    for _ in range(VERIFY_CALLS):
        scores(x[:1])
    reference_calls: list[int] = []
    sk = scores._sk
    scores._sk = lambda rows: reference_calls.append(len(rows)) or sk(rows)  # type: ignore[method-assign]
    scores(x[:1])
    assert reference_calls == []  # past the verified calls: treelite only


def test_an_uncalibrated_scorer_uses_scikit_learn() -> None:
    model = fitted("hgb")
    scores = Scores(model, "approved")
    assert not scores.fast
    x, _ = data(seed=5, n=3)
    np.testing.assert_allclose(scores(x), positive_scores(model, x, "approved"))


@pytest.mark.parametrize("kind", sorted(TREELITE_TYPES))
def test_missing_values_are_scored_as_scikit_learn_scores_or_refuses_them(kind: str) -> None:
    model = fitted(kind)  # trained without missing values
    x, _ = data(seed=6, n=300)
    rows = profile_rows(build_profiles(x, [f"f{i}" for i in range(6)]), [f"f{i}" for i in range(6)])
    assert rows is not None and np.isnan(rows).any()
    scores = scores_for(model, "approved", 6, rows)
    assert scores.fast  # the load-time check passed on rows with missing values
    x[0, 2] = np.nan
    try:
        want = positive_scores(model, x[:3], "approved")
    except ValueError:  # GradientBoosting takes no missing values: neither does the fast path
        with pytest.raises(ValueError, match="NaN"):
            scores(x[:3])
    else:
        np.testing.assert_allclose(scores(x[:3]), want, rtol=0, atol=1e-12)


def test_profile_rows_follow_the_training_profiles() -> None:
    x, _ = data(seed=7, n=2000)
    names = [f"f{i}" for i in range(6)]
    rows = profile_rows(build_profiles(x, names), names, n=4000)
    assert rows is not None and rows.shape == (4000, 6)
    observed = np.nanstd(rows, axis=0) / np.std(x, axis=0)
    assert np.all((observed > 0.8) & (observed < 1.2))  # each feature's spread, from its sketch
    assert profile_rows({"f0": {}}, names) is None  # a feature without a profile: no rows
