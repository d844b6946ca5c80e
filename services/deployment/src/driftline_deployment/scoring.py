"""Positive-class scores of a served model, fast for the small batches a busy install scores.

scikit-learn's tree ensembles predict tree by tree from Python: a HistGradientBoosting
``predict_proba`` costs ~1.8 ms for 150 trees whatever the row count, so with many models on one
install (a consumer batch holds one or two rows of each) scoring is all per-call overhead. For the
tree ensembles treelite can import (HistGradientBoosting, RandomForest, ExtraTrees,
GradientBoosting), :class:`Scores` predicts batches below a crossover size with treelite's GTIL
(one C++ call for all trees: ~0.05-0.1 ms for a row) and larger ones with scikit-learn, whose
per-row cost is lower.

The crossover is measured per model at load (:meth:`Scores.calibrate`: both paths timed on 1 and
256 rows), not a constant: it depends on the model's size and type. Both paths compute the same
function, and that is checked, not assumed: at load on 256 rows drawn from the training set's
feature profiles (each feature's quantile sketch in the model's metadata, with missing values),
then on the first :data:`VERIFY_CALLS` fast calls against the rows being served. A model whose
scores differ by more than :data:`TOLERANCE` is served by scikit-learn from then on (log event
``fast_scoring_disabled``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from driftline.logging import get_logger
from driftline_ml.models import positive_scores

log = get_logger(__name__)

VERIFY_CALLS = 5  # fast calls compared with scikit-learn on the rows they serve (each costs a scikit-learn call)
TOLERANCE = 1e-6  # binary models agree to ~1e-18; multi-class softmax is float32 in treelite (~1e-8)
CALIBRATION_ROWS = (1, 256)


def _import_treelite(estimator: Any) -> Any | None:
    """The treelite model of ``estimator``, or None when treelite cannot import it."""
    try:
        import treelite.sklearn
    except ImportError:  # pragma: no cover - a dependency of the service
        return None
    try:
        return treelite.sklearn.import_model(estimator)
    except Exception:  # any type treelite does not know (LogisticRegression, a single tree)
        return None


def _allows_nan(estimator: Any) -> bool:
    try:
        return bool(estimator.__sklearn_tags__().input_tags.allow_nan)
    except AttributeError:
        return False


class Scores:
    """Scores for the positive class of rows; see the module doc. Thread-safe: the verification
    counter is the only state that changes after :meth:`calibrate`."""

    def __init__(self, estimator: Any, positive_class: str) -> None:
        self.estimator = estimator
        self.positive_class = positive_class
        self._tree = _import_treelite(estimator)
        classes = [str(c) for c in getattr(estimator, "classes_", ())]
        # treelite gives (rows, 1, k): k = 1 for a binary boosted model (the last class's
        # probability), k = len(classes) otherwise.
        self._column = classes.index(positive_class) if positive_class in classes else len(classes) - 1
        # treelite scores a missing value wherever scikit-learn would refuse it: rows with one go to
        # scikit-learn (and its error) for an estimator that does not take them.
        self.allow_nan = _allows_nan(estimator)
        self.fast_below = 0  # rows: batches with fewer use treelite; 0 = never (until calibrated)
        self._verify_left = VERIFY_CALLS
        self._lock = threading.Lock()

    @property
    def fast(self) -> bool:
        return self._tree is not None and self.fast_below > 0

    def _tree_scores(self, x: NDArray[np.float64]) -> NDArray[np.float64]:
        import treelite.gtil

        tree = self._tree
        if tree is None:  # dropped meanwhile by another thread's verification
            return self._sk(x)
        out = np.asarray(treelite.gtil.predict(tree, x, nthread=1), dtype=np.float64).reshape(len(x), -1)
        if out.shape[1] == 1:  # binary boosting: the probability of classes_[1]
            p1 = out[:, 0]
            return p1 if self._column == 1 else 1.0 - p1
        return np.asarray(out[:, self._column])

    def calibrate(self, n_features: int, rows: NDArray[np.float64] | None = None) -> None:
        """Check both paths agree on ``rows`` (default: zeros), time them on 1 and 256 rows and
        set :attr:`fast_below` to where they cross (blocking)."""
        if self._tree is None:
            return
        x = np.zeros((max(CALIBRATION_ROWS), n_features)) if rows is None else rows
        if not self.allow_nan:
            x = np.nan_to_num(x, nan=0.0)
        try:
            fast, reference = self._tree_scores(x), self._sk(x)
            if not np.allclose(fast, reference, atol=TOLERANCE, rtol=0, equal_nan=True):
                worst = float(np.nanmax(np.abs(fast - reference)))
                log.warning("fast_scoring_disabled", reason=f"differs from scikit-learn by {worst:.3g} at load")
                self._tree = None
                return
        except Exception as exc:  # treelite refused the input: serve with scikit-learn
            log.warning("fast_scoring_disabled", reason=f"{type(exc).__name__}: {exc}"[:300])
            self._tree = None
            return
        if len(x) < max(CALIBRATION_ROWS):
            x = np.resize(x, (max(CALIBRATION_ROWS), n_features))
        cost: dict[str, list[float]] = {"tree": [], "sk": []}
        for n in CALIBRATION_ROWS:
            for name, fn in (("tree", self._tree_scores), ("sk", self._sk)):
                best = float("inf")
                for _ in range(3):
                    start = time.perf_counter()
                    fn(x[:n])
                    best = min(best, time.perf_counter() - start)
                cost[name].append(best)
        (t1, tn), (s1, sn) = cost["tree"], cost["sk"]
        lo, hi = CALIBRATION_ROWS
        if t1 >= s1:
            self.fast_below = 0
        elif tn <= sn:
            self.fast_below = hi + 1  # still faster at the larger size: use it up to there
        else:  # linear in rows: a + b·n for each; they cross where the tree path's slope catches up
            t_slope, s_slope = (tn - t1) / (hi - lo), (sn - s1) / (hi - lo)
            self.fast_below = int(lo + (s1 - t1) / (t_slope - s_slope)) + 1

    def _sk(self, x: NDArray[np.float64]) -> NDArray[np.float64]:
        return positive_scores(self.estimator, x, self.positive_class)

    def __call__(self, x: NDArray[np.float64]) -> NDArray[np.float64]:
        if self._tree is None or len(x) >= self.fast_below or (not self.allow_nan and np.isnan(x).any()):
            return self._sk(x)
        scores = self._tree_scores(x)
        if self._verify_left > 0:
            with self._lock:
                self._verify_left -= 1
            reference = self._sk(x)
            if not np.allclose(scores, reference, atol=TOLERANCE, rtol=0, equal_nan=True):
                worst = float(np.nanmax(np.abs(scores - reference)))
                log.warning("fast_scoring_disabled", reason=f"differs from scikit-learn by {worst:.3g} on served rows")
                self._tree = None
                return reference
        return scores


def profile_rows(
    profiles: Mapping[str, Any], feature_names: Sequence[str], n: int = 256, *, seed: int = 0
) -> NDArray[np.float64] | None:
    """``n`` rows like the training set's, feature by feature: values drawn from each numeric
    feature's quantile sketch (a tenth missing), codes from each categorical one's categories.
    None when the profiles do not cover every feature (the check then uses zero rows)."""
    rng = np.random.default_rng(seed)
    columns = []
    for name in feature_names:
        profile = profiles.get(name)
        if not isinstance(profile, Mapping):
            return None
        if profile.get("kind") == "categorical":
            try:
                values = np.asarray([float(c) for c in profile.get("categories") or ()], dtype=np.float64)
            except (TypeError, ValueError):
                return None
        else:
            values = np.asarray(profile.get("sketch") or (), dtype=np.float64)
        if values.size == 0:
            values = np.asarray([np.nan])
        column = rng.choice(values, size=n)
        column[rng.random(n) < 0.1] = np.nan
        columns.append(column)
    return np.column_stack(columns) if columns else None


def scores_for(estimator: Any, positive_class: str, n_features: int, rows: NDArray[np.float64] | None = None) -> Scores:
    """Blocking (treelite's import of the model and the calibration: milliseconds): run it off the loop."""
    scores = Scores(estimator, positive_class)
    scores.calibrate(n_features, rows)
    return scores
