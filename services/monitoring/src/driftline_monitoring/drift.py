"""Drift detection for one model version: sliding windows, the tests, and drift episodes.

Pure logic (no I/O) so it can be tested with plain data.

* Input drift, per feature of the reference profile, over the last ``window`` feature vectors:
  PSI on the reference bins (every feature) and a two-sample KS test against the reference
  sketch (numeric features). A feature drifted when its PSI is above both ``psi_threshold`` and
  the PSI that sampling noise reaches at level ``ks_p_value / m_psi`` for these sample sizes (see
  :func:`psi_noise_bound`; it matters only for small references), or when the KS p-value is
  below ``ks_p_value / m_ks``; m_psi and m_ks are the numbers of features each test runs on
  (PSI: every feature with reference data, categoricals included; KS: the numeric ones).
  Bonferroni: the policy's ``ks_p_value`` is the false-alarm rate of one check across all
  features, not of each. The KS evidence reports the distance D and, as its threshold, the
  critical distance at that level for these sample sizes, so every piece of evidence reads
  "statistic > threshold". Input drift is raised when at least ``min_drifted_features``
  features drifted.
* Prediction drift: the same two tests on the champion's positive-class scores against the
  reference score profile (methods ``score_psi`` and ``score_ks``).
* Performance drift, on champion predictions joined with labels: rolling accuracy over the last
  ``performance_window`` outcomes (from ``min_labels`` on) more than ``accuracy_drop`` below the
  reference (holdout) accuracy; or an alarm of one of the policy's ``detectors`` on the error
  stream (river's Page-Hinkley, increases only; river's ADWIN, counted when its estimate of the
  error rate rose) while the rolling accuracy is below the reference by at least
  ``accuracy_drop / 2`` and three standard errors. The guard exists because Page-Hinkley on a 0/1
  error stream with a small ``delta`` alarms on noise every few thousand outcomes when the error
  rate is 20-30 %; it keeps the detectors as early detectors of a real change without letting
  noise through.
* Tests run every ``check_every`` vectors once the window holds ``min_window`` of them;
  performance is checked at every outcome. Cost per record: O(features) to update the windows,
  plus one check (O(window x features)) every ``check_every`` records. The change-point estimate
  of a performance drift (O(performance_window)) is computed only for the detection that is
  published (:meth:`ModelMonitor.with_onset`), not at every outcome of an open episode. Memory:
  the windows.
* Episodes (:class:`Episode`): the first detection opens an episode and is published; while it is
  open, further detections refresh it, and the episode asks for training again while served
  performance stays degraded (``retry_after_labels`` new labelled outcomes, growing by
  ``retry_growth``, up to ``max_attempts``) and once more to consolidate a promotion made on few
  post-drift examples (``consolidate_factor``). A new champion inherits it; it resolves after
  ``resolve_after`` consecutive clean checks with the champion's performance back, or gives up
  when its attempts are exhausted (docs/architecture.md, "Drift episodes").
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import lru_cache
from typing import Any, TypeVar

import numpy as np
from river.drift import ADWIN, PageHinkley
from scipy import stats

from driftline.project import DriftPolicy
from driftline.records import DriftEvidence
from driftline_ml.profiles import category_key, ks, numeric_profile, psi
from driftline_monitoring.lifecycle import RECENT, Attempt, Episode, change_point, refresh_gained

# A drift run that chose the whole selection over the examples since the onset shows a slow change
# when at most this share of it was after the onset (with nearly all of it after, the two windows
# are nearly the same and the choice is noise).
SLOW_CHANGE_SHARE = 0.5
LONG_WINDOW_FACTOR = 4  # the long window of ADWIN's guard, in performance windows

INPUT, PREDICTION, PERFORMANCE = "input", "prediction", "performance"

V = TypeVar("V")


@dataclass(frozen=True)
class Reference:
    """What a champion was trained on, from its metadata document."""

    model_name: str
    version: int
    profiles: Mapping[str, Mapping[str, Any]]
    score_profile: Mapping[str, Any] | None
    accuracy: float | None
    positive_class: str
    promotion_event_id: str
    examples: int | None = None  # labelled examples of its run (train + holdout)
    # The score profile comes from the model's first ``window`` served scores (a model refitted on
    # its holdout has no out-of-sample scores to profile at training time).
    scores_from_serving: bool = False
    episode_id: str | None = None  # the drift episode whose request trained it, if any
    # The training window its drift run chose (driftline_training.window: since_onset | recent),
    # and the share of the selection that was after the onset; None when the run made no choice
    # (every selected example was after the onset, or it had no onset).
    window: str | None = None
    since_onset_share: float | None = None
    # A refresh of a slow change (its run's ``refresh``), and its run's paired counts against the
    # champion it was compared with (``comparison.wins`` / ``losses``), for the chain's own test.
    refresh: bool = False
    wins: int | None = None
    losses: int | None = None

    @classmethod
    def from_metadata(cls, model_name: str, version: int, metadata: Mapping[str, Any], event_id: str) -> Reference:
        profile = metadata.get("reference_profile") or {}
        metrics = metadata.get("metrics") or {}
        accuracy = metrics.get("accuracy")
        profiles = dict(profile.get("features") or {})
        inputs = metadata.get("feature_names")
        if inputs:
            # Input drift is about the model's inputs: a vector's other features (say, a windowed
            # count the model does not use) may move without the model caring.
            profiles = {name: p for name, p in profiles.items() if name in set(inputs)}
        from_serving = profile.get("score_reference") == "first_served_window"
        choice = ((metadata.get("selection") or {}).get("window")) or {}
        comparison = metadata.get("comparison") or {}
        return cls(
            model_name=model_name,
            version=version,
            profiles=profiles,
            score_profile=None if from_serving else profile.get("score"),
            scores_from_serving=from_serving,
            accuracy=float(accuracy) if accuracy is not None else None,
            positive_class=str(metadata.get("positive_class") or ""),
            promotion_event_id=event_id,
            examples=_examples_of(metadata),
            episode_id=metadata.get("drift_episode_id"),
            window=choice.get("chosen"),
            since_onset_share=_share(choice),
            refresh=bool(metadata.get("refresh")),
            wins=_count(comparison.get("wins")),
            losses=_count(comparison.get("losses")),
        )

    @property
    def slow_change(self) -> bool:
        """Its drift run learnt better from the whole selection than from the examples since the
        onset, though most of it came before the onset: the change is slow, not a switch (a refresh
        chain follows, see :meth:`Episode.refresh_target`)."""
        share = self.since_onset_share
        return self.window == RECENT and share is not None and share <= SLOW_CHANGE_SHARE


def _count(value: Any) -> int | None:
    return int(value) if value is not None else None


def _share(choice: Mapping[str, Any]) -> float | None:
    since_onset, recent = choice.get("since_onset"), choice.get("recent")
    return int(since_onset) / int(recent) if since_onset is not None and recent else None


def _examples_of(metadata: Mapping[str, Any]) -> int | None:
    n_train, n_holdout = metadata.get("n_train"), metadata.get("n_holdout")
    return int(n_train) + int(n_holdout) if n_train is not None and n_holdout is not None else None


@dataclass(frozen=True)
class Evidence:
    """One test's result, as carried by DriftDetected.evidence."""

    feature: str | None
    method: str
    statistic: float
    threshold: float
    p_value: float | None
    drifted: bool

    def as_record(self) -> DriftEvidence:
        return DriftEvidence(
            feature=self.feature,
            method=self.method,
            statistic=_finite(self.statistic),
            threshold=_finite(self.threshold),
            p_value=None if self.p_value is None else _finite(self.p_value),
            drifted=self.drifted,
        )


def _finite(x: float) -> float:
    return float(x) if math.isfinite(x) else 0.0


@lru_cache(maxsize=4096)
def psi_noise_bound(level: float, bins: int, n: int, m: int) -> float:
    """PSI that sampling noise alone exceeds with probability ``level``, for a reference of ``n``
    and a window of ``m`` records over ``bins`` bins.

    With no drift, PSI (a symmetric chi-square divergence) is approximately
    (1/n + 1/m) times a chi-square variable with bins - 1 degrees of freedom. The conventional
    PSI thresholds assume large samples on both sides; against a small reference (a model trained
    on a few hundred examples after a drift has a holdout of a few dozen scores) noise alone
    passes them, so a PSI counts as drift only above both the policy's threshold and this bound.
    """
    if n <= 0 or m <= 0 or bins < 2:
        return 0.0
    return float((1 / n + 1 / m) * stats.chi2.isf(level, bins - 1))


def psi_threshold(policy: DriftPolicy, profile: Mapping[str, Any], m: int, level: float) -> float:
    """The PSI above which a sample of ``m`` records drifted from ``profile`` (see above)."""
    bins = len(profile.get("frequencies") or ()) + (1 if profile.get("kind") == "categorical" else 0)
    n = int(profile.get("count") or 0)
    return float(max(policy.psi_threshold, psi_noise_bound(level, bins, n, m)))


@lru_cache(maxsize=4096)
def ks_critical_distance(p_threshold: float, n_eff: int) -> float:
    """KS distance whose p-value is ``p_threshold`` for an effective sample size ``n_eff``."""
    return float(stats.kstwo.isf(p_threshold, max(1, n_eff)))


def numeric_tests(
    feature: str | None,
    profile: Mapping[str, Any],
    values: np.ndarray,
    policy: DriftPolicy,
    ks_level: float,
    prefix: str = "",
    psi_level: float | None = None,
) -> list[Evidence]:
    """PSI and KS of a numeric sample against its reference profile, KS at ``ks_level`` and the
    PSI noise bound at ``psi_level`` (default: the same level)."""
    v = values[~np.isnan(values)]
    p = psi(dict(profile), v)
    d, p_value = ks(dict(profile), v)
    n, m = int(profile.get("count") or len(profile.get("sketch") or ())), int(v.size)
    n_eff = round(n * m / (n + m)) if n and m else 1
    limit = psi_threshold(policy, profile, m, ks_level if psi_level is None else psi_level)
    return [
        Evidence(feature, f"{prefix}psi", p, limit, None, p > limit),
        Evidence(feature, f"{prefix}ks", d, ks_critical_distance(ks_level, n_eff), p_value, p_value < ks_level),
    ]


def tested_features(profiles: Mapping[str, Mapping[str, Any]], features: Sequence[str]) -> tuple[list[str], list[str]]:
    """The features PSI runs on (every one with reference frequencies) and those KS runs on (the
    numeric ones among them): the m of each test's Bonferroni level."""
    psi_tested = [f for f in features if profiles[f].get("frequencies")]
    return psi_tested, [f for f in psi_tested if profiles[f].get("kind") == "numeric"]


def input_tests(
    profiles: Mapping[str, Mapping[str, Any]], columns: Mapping[str, Sequence[Any]], policy: DriftPolicy
) -> list[Evidence]:
    """Every feature of the window against the reference profile (see the module doc)."""
    psi_tested, ks_tested = tested_features(profiles, list(columns))
    ks_level = policy.ks_p_value / max(1, len(ks_tested))
    psi_level = policy.ks_p_value / max(1, len(psi_tested))
    out: list[Evidence] = []
    for feature in psi_tested:
        profile, values = profiles[feature], columns[feature]
        if profile.get("kind") == "numeric":
            out += numeric_tests(feature, profile, _as_floats(values), policy, ks_level, psi_level=psi_level)
        else:
            # The records PSI counts: None and NaN are missing values, not a category.
            m = sum(category_key(x) is not None for x in values)
            p = psi(dict(profile), values)
            limit = psi_threshold(policy, profile, m, psi_level)
            out.append(Evidence(feature, "psi", p, limit, None, p > limit))
    return out


def score_tests(profile: Mapping[str, Any], scores: Sequence[float], policy: DriftPolicy) -> list[Evidence]:
    return numeric_tests(None, profile, np.asarray(scores, dtype=np.float64), policy, policy.ks_p_value, "score_")


def _as_floats(values: Sequence[Any]) -> np.ndarray:
    out = np.empty(len(values), dtype=np.float64)
    for i, x in enumerate(values):
        out[i] = float(x) if isinstance(x, int | float) and not isinstance(x, bool) else np.nan
    return out


@dataclass(frozen=True)
class Detection:
    """A check's verdict: the drift found (if any) and every test's evidence."""

    kind: str
    method: str
    statistic: float
    threshold: float
    features: list[str]
    evidence: list[Evidence]
    window_start_ms: int
    window_end_ms: int
    window_size: int
    onset_ms: int | None = None  # estimated start of the change, when the detector can tell


def main_detection(
    kind: str,
    evidence: list[Evidence],
    window: tuple[int, int, int],
    features: list[str],
    headline: list[Evidence] | None = None,
) -> Detection:
    """The headline test of a drifted check: among ``headline`` (default: all the evidence),
    the drifted test furthest beyond its threshold."""
    candidates = headline if headline is not None else evidence
    drifted = [e for e in candidates if e.drifted] or candidates
    top = max(drifted, key=lambda e: e.statistic / e.threshold if e.threshold else e.statistic)
    return Detection(kind, top.method, top.statistic, top.threshold, features, evidence, *window)


@dataclass
class CheckResult:
    """Everything one input/prediction check computed (persisted as a window summary)."""

    records_seen: int
    window: tuple[int, int, int]  # first and last event time (ms), size
    inputs: list[Evidence]
    scores: list[Evidence]
    score_window: int
    performance: dict[str, Any]
    detection: Detection | None

    @property
    def clean(self) -> bool:
        return self.detection is None and not self.performance.get("degraded", False)


class BoundedMap(OrderedDict[str, V]):
    """An insertion-ordered map that forgets its oldest entries beyond ``capacity``."""

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity

    def put(self, key: str, value: V) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.capacity:
            self.popitem(last=False)


def _new_adwin(delta: float) -> ADWIN:
    new: Callable[..., ADWIN] = ADWIN  # river leaves ADWIN.__init__ unannotated
    return new(delta=delta)


class PerformanceTracker:
    """Rolling accuracy, and Page-Hinkley and ADWIN on the error stream of joined predictions.

    Both detectors are river's. ADWIN (Bifet & Gavaldà) keeps an adaptive window and alarms when
    two of its sub-windows' means differ beyond a Hoeffding-style bound at confidence ``adwin_delta``;
    it alarms on a fall of the error rate as well, so only an alarm after which its estimate of the
    error rate went up counts. Page-Hinkley (``mode="up"``) sees increases only. Either alarm counts
    when the rolling accuracy is also below the reference by :meth:`guard`.
    """

    def __init__(self, policy: DriftPolicy, reference_accuracy: float | None) -> None:
        self.policy = policy
        self.reference_accuracy = reference_accuracy
        self.outcomes: deque[tuple[int, bool]] = deque(maxlen=policy.performance_window)
        self.correct = 0
        self.total = 0
        # A longer window for ADWIN's guard: a slow change lowers accuracy by less than three
        # standard errors of the rolling window, but a sustained shortfall is clear over more outcomes.
        self.long: deque[bool] = deque(maxlen=LONG_WINDOW_FACTOR * policy.performance_window)
        self.long_correct = 0
        self.ph = PageHinkley(
            min_instances=min(30, policy.min_labels),
            delta=policy.page_hinkley_delta,
            threshold=policy.page_hinkley_threshold,
            mode="up",
        )
        self._ph_update: Callable[[float], None] = self.ph.update  # river leaves update() unannotated
        self.use_ph = "page_hinkley" in policy.detectors
        self.adwin: ADWIN | None = _new_adwin(policy.adwin_delta) if "adwin" in policy.detectors else None
        self.ph_alarm_since_check = False
        self.ph_alarms = 0
        self.adwin_alarms = 0  # ADWIN changes with a rising error rate (those that count)
        self.adwin_changes = 0  # every change ADWIN found, falls included

    @property
    def accuracy(self) -> float | None:
        return self.correct / len(self.outcomes) if self.outcomes else None

    @property
    def drop(self) -> float | None:
        acc = self.accuracy
        if acc is None or self.reference_accuracy is None or len(self.outcomes) < self.policy.min_labels:
            return None
        return self.reference_accuracy - acc

    @property
    def long_drop(self) -> float | None:
        """The reference accuracy minus the accuracy over the long window (once it is full)."""
        if self.reference_accuracy is None or len(self.long) < (self.long.maxlen or 0):
            return None
        return self.reference_accuracy - self.long_correct / len(self.long)

    def long_noise(self) -> float:
        """Three standard errors of the long window's accuracy."""
        n = max(1, len(self.long))
        acc = self.long_correct / n
        return float(3 * math.sqrt(acc * (1 - acc) / n))

    def guard(self) -> float:
        """Accuracy drop a Page-Hinkley alarm needs to count: half the policy's drop, and at least
        three standard errors of the rolling accuracy (noisy error streams need more)."""
        return float(max(self.policy.accuracy_drop / 2, self.noise()))

    def noise(self) -> float:
        """Three standard errors of the rolling accuracy. An ADWIN alarm needs only this much of a
        drop: ADWIN bounds its own false alarms (``adwin_delta``), Page-Hinkley does not."""
        acc, n = self.accuracy or 0.0, max(1, len(self.outcomes))
        return float(3 * math.sqrt(acc * (1 - acc) / n))

    def ph_statistic(self) -> float:
        """The Page-Hinkley statistic that river compares with its threshold (0 before any outcome).

        river has no public accessor: it keeps the one-sided cumulative sum and its running minimum
        in private attributes, and their gap is the statistic. tests/unit/monitoring/test_drift.py
        pins both (a river upgrade that renames them or changes their meaning fails it)."""
        if self.total == 0:  # river's minimum starts at +inf: the gap would be -inf, which is not JSON
            return 0.0
        return float(self.ph._sum_increase - self.ph._min_increase)

    def add(self, event_time_ms: int, correct: bool) -> Detection | None:
        if len(self.outcomes) == self.outcomes.maxlen:
            self.correct -= self.outcomes[0][1]
        self.outcomes.append((event_time_ms, correct))
        self.correct += correct
        self.total += 1
        if len(self.long) == self.long.maxlen:
            self.long_correct -= self.long[0]
        self.long.append(correct)
        self.long_correct += correct
        error = 0.0 if correct else 1.0
        ph_alarm = False
        if self.use_ph:
            self._ph_update(error)
            ph_alarm = bool(self.ph.drift_detected)  # river resets its sums at the next update
        ph_stat = self.ph_statistic()
        adwin_alarm = self._adwin_update(error)
        drop = self.drop
        if drop is None:
            return None
        policy = self.policy
        acc_drifted = drop > policy.accuracy_drop
        guard = self.guard()
        ph_drifted = ph_alarm and drop > guard
        long_drop = self.long_drop
        adwin_drifted = adwin_alarm and (
            drop > self.noise()
            or (long_drop is not None and long_drop > self.long_noise())
            or self._degraded_since_change()
        )
        if ph_alarm:
            self.ph_alarms += 1
        if adwin_alarm:
            self.adwin_alarms += 1
        self.ph_alarm_since_check = self.ph_alarm_since_check or ph_drifted or adwin_drifted
        evidence = [
            Evidence(None, "accuracy_drop", drop, policy.accuracy_drop, None, acc_drifted),
        ]
        if self.use_ph:
            evidence.append(Evidence(None, "page_hinkley", ph_stat, policy.page_hinkley_threshold, None, ph_drifted))
        if self.adwin is not None:
            # An ADWIN change of the error rate counts when the accuracy drop is beyond three
            # standard errors: that drop is its statistic, those three standard errors its threshold.
            evidence.append(Evidence(None, "adwin", drop, self.noise(), None, adwin_drifted))
        if not (acc_drifted or ph_drifted or adwin_drifted):
            return None
        window = (self.outcomes[0][0], self.outcomes[-1][0], len(self.outcomes))
        return main_detection(PERFORMANCE, evidence, window, [])  # its onset only if it is reported

    def _adwin_update(self, error: float) -> bool:
        """Feed ADWIN; True at a change after which its estimate of the error rate went up."""
        if self.adwin is None:
            return False
        before = float(self.adwin.estimation)
        update: Callable[[float], None] = self.adwin.update  # river leaves update() unannotated
        update(error)
        if not self.adwin.drift_detected:
            return False
        self.adwin_changes += 1
        return float(self.adwin.estimation) > before

    def _degraded_since_change(self) -> bool:
        """The outcomes after the rolling window's most likely change point have an accuracy below
        the reference by three of their standard errors. Right after a sudden change the rolling
        window still mixes both regimes, and its drop stays under its noise for a while."""
        if self.reference_accuracy is None:
            return False
        ms, _, rose = change_point(self.outcomes)
        after = [ok for t, ok in self.outcomes if t >= ms]
        n = len(after)
        if not rose or n < min(30, self.policy.min_labels):
            return False
        acc = sum(after) / n
        return self.reference_accuracy - acc > 3 * math.sqrt(acc * (1 - acc) / n)

    def degraded(self) -> bool:
        """Served performance is still below the reference (an open episode asks for training
        again only then): the rolling accuracy's drop is beyond :meth:`guard`, or the long
        window's beyond three of its standard errors (a slow change: a few points, sustained)."""
        drop, long_drop = self.drop, self.long_drop
        return (drop is not None and drop > self.guard()) or (long_drop is not None and long_drop > self.long_noise())

    def outcomes_since(self, ms: int) -> int:
        """Outcomes in the window with event time at or after ``ms``."""
        return sum(1 for t, _ in self.outcomes if t >= ms)

    def change_point_ms(self, margin: int = 10) -> int:
        """Event time where the error rate most likely changed within the window (see
        :func:`change_point`; O(window): computed only for a detection that is reported, see
        :meth:`ModelMonitor.with_onset`)."""
        return change_point(self.outcomes, margin)[0]

    def summary(self, reset_alarm: bool = False) -> dict[str, Any]:
        drop = self.drop
        out = {
            "labelled": len(self.outcomes),
            "labelled_total": self.total,
            "accuracy": self.accuracy,
            "reference_accuracy": self.reference_accuracy,
            "accuracy_drop": drop,
            "page_hinkley": self.ph_statistic(),
            "page_hinkley_alarms": self.ph_alarms,
            "adwin_alarms": self.adwin_alarms,
            "degraded": (drop is not None and drop > self.policy.accuracy_drop) or self.ph_alarm_since_check,
        }
        if reset_alarm:
            self.ph_alarm_since_check = False
        return out


@dataclass
class ModelMonitor:
    """Windows and detectors of one champion version; a new champion gets a new monitor."""

    reference: Reference
    policy: DriftPolicy
    resolve_after: int = 3
    join_capacity: int = 50_000
    max_examples: int | None = None  # the training policy's: caps the consolidation target
    min_examples: int = 0  # the training policy's: a drift run waits for these since the onset
    refresh_confidence: float = 0.0  # the promotion policy's: a refresh's gain for the chain (carry)
    features: list[str] = field(init=False)
    vectors: deque[tuple[int, tuple[Any, ...]]] = field(init=False)
    scores: deque[tuple[int, float]] = field(init=False)
    performance: PerformanceTracker = field(init=False)
    predictions: BoundedMap[tuple[str, int]] = field(init=False)  # source event id → (predicted class, event time ms)
    joined: BoundedMap[bool] = field(init=False)  # source event ids already counted (replays)
    episode: Episode | None = None
    score_profile: Mapping[str, Any] | None = None  # the reference's, or the first served window's
    records_seen: int = 0
    since_check: int = 0
    last_check: CheckResult | None = None

    def __post_init__(self) -> None:
        self.features = list(self.reference.profiles)
        self.score_profile = self.reference.score_profile
        self.vectors = deque(maxlen=self.policy.window)
        self.scores = deque(maxlen=self.policy.window)
        self.performance = PerformanceTracker(self.policy, self.reference.accuracy)
        self.predictions = BoundedMap(self.join_capacity)
        self.joined = BoundedMap(self.join_capacity)

    # -- updates, O(features) each ---------------------------------------------------------------

    def add_vector(self, event_time_ms: int, features: Mapping[str, Any]) -> bool:
        """Add a feature vector; True when a check is due."""
        self.vectors.append((event_time_ms, tuple(features.get(f) for f in self.features)))
        self.records_seen += 1
        self.since_check += 1
        if self.since_check >= self.policy.check_every and len(self.vectors) >= self.policy.min_window:
            self.since_check = 0
            return True
        return False

    def add_prediction(self, source_event_id: str, event_time_ms: int, score: float, predicted: str | None) -> None:
        self.scores.append((event_time_ms, score))
        if self.score_profile is None and self.reference.scores_from_serving and len(self.scores) == self.policy.window:
            # The first served window is the reference; the test starts on the windows after it.
            self.score_profile = numeric_profile([s for _, s in self.scores])
            self.scores.clear()
        if predicted is not None and source_event_id not in self.joined:
            self.predictions.put(source_event_id, (predicted, event_time_ms))

    def add_label(self, source_event_id: str, label: str) -> Detection | None:
        """Join a label with this model's prediction of the same event, if it has one."""
        pending = self.predictions.pop(source_event_id, None)
        if pending is None or source_event_id in self.joined:
            return None
        self.joined.put(source_event_id, True)
        predicted, event_time_ms = pending
        if self.episode is not None:
            self.episode.count_outcome(event_time_ms, predicted == label)
        return self.performance.add(event_time_ms, predicted == label)

    # -- the periodic check ----------------------------------------------------------------------

    def snapshot(self) -> tuple[dict[str, list[Any]], list[float], tuple[int, int, int]]:
        """Copies of the windows, to compute on outside the event loop."""
        rows = list(self.vectors)
        columns = {f: [r[1][j] for r in rows] for j, f in enumerate(self.features)}
        window = (rows[0][0], rows[-1][0], len(rows)) if rows else (0, 0, 0)
        return columns, [s for _, s in self.scores], window

    def compute(self, columns: dict[str, list[Any]], scores: list[float], window: tuple[int, int, int]) -> CheckResult:
        """The tests on a snapshot (CPU work, safe to run in a thread: touches no monitor state)."""
        policy = self.policy
        inputs = input_tests(self.reference.profiles, columns, policy)
        score_evidence: list[Evidence] = []
        if self.score_profile and len(scores) >= policy.min_window:
            score_evidence = score_tests(self.score_profile, scores, policy)
        drifted_features = sorted({e.feature for e in inputs if e.drifted and e.feature is not None})
        detection = None
        if len(drifted_features) >= policy.min_drifted_features:
            detection = main_detection(INPUT, inputs + score_evidence, window, drifted_features, inputs)
        elif any(e.drifted for e in score_evidence):
            detection = main_detection(PREDICTION, score_evidence + inputs, window, [], score_evidence)
        return CheckResult(self.records_seen, window, inputs, score_evidence, len(scores), {}, detection)

    def conclude(self, result: CheckResult) -> CheckResult:
        """Attach the performance state at check time (and clear its alarm flag)."""
        result.performance = self.performance.summary(reset_alarm=True)
        self.last_check = result
        return result

    # -- episodes --------------------------------------------------------------------------------

    def with_onset(self, detection: Detection) -> Detection:
        """The detection with its estimated onset, for the one detection that is published. Call it
        before the windows change (synchronously after the detection): it reads the outcome window."""
        if detection.kind == PERFORMANCE and detection.onset_ms is None:
            return replace(detection, onset_ms=self.performance.change_point_ms())
        return detection

    def open(self, episode_id: str, detection: Detection) -> Episode:
        """The episode a published detection (with its onset, see :meth:`with_onset`) opens."""
        onset = detection.onset_ms if detection.onset_ms is not None else detection.window_start_ms
        self.episode = Episode(
            episode_id,
            detection.kind,
            onset_ms=onset,
            labelled_since_onset=self.performance.outcomes_since(onset),
            performance_onset=detection.kind == PERFORMANCE,
        )
        self.episode.outcomes.extend(o for o in self.performance.outcomes if o[0] >= onset)
        # Training holds the first request until min_examples are labelled since the onset: the
        # first retry's spacing counts from then, not from the detection.
        self.episode.labelled_at_attempt = max(self.episode.labelled_since_onset, self.min_examples)
        self.episode.first_examples = self.episode.labelled_at_attempt
        return self.episode

    def should_open(self, detection: Detection) -> bool:
        """A detection opens an episode only when none is open; otherwise it keeps it open. The first
        performance detection of an episode opened on the inputs moves its onset to the error
        stream's change point: that is when the model started to be wrong."""
        episode = self.episode
        if episode is None:
            return True
        episode.clean_checks = 0
        if detection.kind == PERFORMANCE and not episode.performance_onset:
            episode.onset_ms = self.performance.change_point_ms()
            episode.labelled_since_onset = self.performance.outcomes_since(episode.onset_ms)
            episode.outcomes.clear()
            episode.outcomes.extend(o for o in self.performance.outcomes if o[0] >= episode.onset_ms)
            episode.labelled_at_attempt = min(episode.labelled_at_attempt, episode.labelled_since_onset)
            episode.performance_onset = True
        return False

    def carry(self, episode: Episode | None) -> None:
        """A new champion inherits the open episode of the model it replaces; when the episode's own
        request trained it, a consolidation run may follow (:meth:`Episode.consolidation_target`)."""
        self.episode = episode
        if episode is not None:
            episode.outcomes.clear()  # the errors of the model it replaces say nothing about this one
        if episode is not None and self.reference.episode_id == episode.episode_id:
            episode.promoted_examples = self.reference.examples
            # Once a run showed the change to be slow, the episode refreshes until its chain ends.
            episode.slow_change = episode.slow_change or self.reference.slow_change
            if self.refresh_gain():
                episode.promoted_attempt = episode.attempts  # runs of one episode never overlap
            episode.clean_checks = 0
            episode.outcome()  # this model is the outcome of the episode's last attempt

    def refresh_gain(self) -> bool:
        """Whether this model's promotion goes on with the episode's refresh chain: any promotion,
        but a refresh let through by ``promotion.refresh_confidence`` only when it was better than
        the champion it replaced beyond the same bound (:func:`refresh_gained`)."""
        ref = self.reference
        if not ref.refresh or self.refresh_confidence <= 0:
            return True
        return (
            ref.wins is not None
            and ref.losses is not None
            and refresh_gained(ref.wins, ref.losses, self.refresh_confidence)
        )

    def due_attempt(self) -> Attempt | None:
        """The further training request the open episode makes now, if any (see
        :meth:`Episode.next_attempt`); call :meth:`Episode.took` once it is recorded."""
        episode = self.episode
        if episode is None:
            return None
        perf = self.performance
        return episode.next_attempt(
            self.policy,
            degraded=perf.degraded(),
            drop=perf.drop or 0.0,
            guard=perf.guard(),
            max_examples=self.max_examples,
        )

    def after_check(self, result: CheckResult) -> tuple[Episode, str] | None:
        """Count clean checks of the open episode; (the episode, why) when it ends now.

        A check is clean when it found no drift and served performance is not degraded; while
        labels flow, the current champion's performance must also be known (``min_labels`` of its
        outcomes) and within :meth:`PerformanceTracker.guard` of its reference. A pending
        consolidation keeps the episode open. An episode whose attempts are exhausted while still
        degraded ends as well (``attempts_exhausted``)."""
        episode = self.episode
        if episode is None:
            return None
        perf = self.performance
        if perf.degraded() and episode.exhausted(self.policy, self.max_examples):
            self.episode = None
            return episode, "attempts_exhausted"
        back = result.clean and not perf.degraded() and (perf.total == 0 or perf.drop is not None)
        if not back:
            episode.clean_checks = 0
            return None
        episode.clean_checks += 1
        # A promotion of the episode waits for its consolidation; an input episode whose inputs are
        # back needs none.
        pending = episode.promoted_examples is not None and (
            episode.consolidation_target(self.policy, self.max_examples) is not None
            or episode.refresh_target(self.policy, self.max_examples) is not None
        )
        if episode.clean_checks >= self.resolve_after and not pending:
            self.episode = None
            return episode, "back_to_normal"
        return None


@dataclass(frozen=True)
class WindowSummary:
    """One check, as stored in ``window_summaries`` (and plotted on the page)."""

    check_id: str
    model_name: str
    model_version: int
    window_start: datetime
    window_end: datetime
    window_size: int
    records_seen: int
    drifted: bool
    kind: str | None
    features: dict[str, dict[str, Any]]
    score: dict[str, Any] | None
    performance: dict[str, Any]
