"""Challenger verdicts: in shadow, the challenger against the champion on the same labelled
events; for a canary, the labelled events each served.

Deployment scores every vector with the champion and, in shadow, the challenger; both predictions
are on ``predictions``. :class:`ShadowJoin` pairs them by event (``source_event_id``) with the
event's label, once all three arrived (in any order), and counts each pair per (model, champion
version, challenger version) in a :class:`PairedCounts`: both right, only the champion right, only
the challenger right, both wrong.

:meth:`PairedCounts.summary` is the verdict, pure arithmetic on those four counts:

* each model's accuracy on the paired events, and the difference challenger - champion,
  ``d = (c - b) / n`` (b: only the champion right, c: only the challenger right);
* its confidence interval, the Wald interval of a difference of paired proportions,
  ``d ± z · sqrt(b + c - (c - b)² / n) / n`` with ``z`` the two-sided normal quantile;
* McNemar's exact test, one-sided (the challenger is better): ``P(X ≥ c)`` for ``X ~ Bin(b + c, ½)``;
* ``verdict``: ``insufficient`` below ``min_pairs`` paired outcomes, ``challenger_better`` when the
  interval lies above 0, ``champion_better`` when it lies below, else ``no_difference``.

:func:`decisive` applies the project's promotion policy (``shadow_min_pairs``,
``shadow_confidence``): a ``challenger_better`` verdict is announced once per comparison on
``models.compared`` (a ``ChallengerCompared`` with the counts and the interval), and the registry
promotes the challenger if it is still the challenger of that champion.

A canary serves a share of the model's entities (split by entity, :mod:`driftline.canary`) while
the champion serves the others, so each event has one prediction: :class:`CanaryJoin` joins the
predictions of each arm with their labels and counts them per (model, champion version, canary
version) in an :class:`ArmCounts`, two independent samples. :meth:`ArmCounts.summary`:

* each arm's accuracy on the labelled events it served, ``p1`` (champion, ``n1`` events) and ``p2``
  (canary, ``n2``), and the difference ``d = p2 - p1``;
* its confidence interval, the Wald interval of a difference of independent proportions,
  ``d ± z · sqrt(p1(1 - p1)/n1 + p2(1 - p2)/n2)``;
* the pooled two-proportion z-test, one-sided (the canary is better):
  ``1 - Φ(d / sqrt(p̄(1 - p̄)(1/n1 + 1/n2)))`` with ``p̄`` both arms' accuracy pooled (0.5 when that
  variance is 0: both arms all right or all wrong, d = 0);
* ``verdict``: ``insufficient`` while either arm has fewer than ``min_labels``, then as in shadow;
  ``decisive``: either arm better, or ``no_difference`` once the canary's arm reached ``max_labels``.

:func:`canary_decisive` applies the policy's ``canary_confidence``, ``canary_min_labels`` and
``canary_max_labels``; a decisive verdict is announced once per comparison (mode ``canary``), and
the registry promotes the canary or withdraws it.

State is in memory and bounded (``capacity`` events awaiting their partners): a restart of
monitoring starts the counts again (the active canaries are rebuilt from ``models.promoted``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

from scipy import stats

from driftline.events import derived_event_id, envelope
from driftline.project import PromotionPolicy
from driftline.records import ChallengerCompared, ModelPromoted
from driftline_monitoring.drift import BoundedMap
from driftline_monitoring.serving import CHAMPION_ACTIONS

CHAMPION, CHALLENGER = "champion", "challenger"
SHADOW = "shadow"
Pair = tuple[str, int, int]  # (model, champion version, challenger version)


def judged(enough: bool, low: float, high: float) -> str:
    """The verdict on the interval [low, high] of challenger - champion, given enough labels."""
    if not enough:
        return "insufficient"
    if low > 0:
        return "challenger_better"
    return "champion_better" if high < 0 else "no_difference"


@dataclass
class PairedCounts:
    """Paired outcomes of one champion version and one challenger version."""

    both_right: int = 0
    champion_only: int = 0  # b: the champion right, the challenger wrong
    challenger_only: int = 0  # c: the challenger right, the champion wrong
    both_wrong: int = 0

    @property
    def n(self) -> int:
        return self.both_right + self.champion_only + self.challenger_only + self.both_wrong

    def add(self, champion_right: bool, challenger_right: bool) -> None:
        if champion_right and challenger_right:
            self.both_right += 1
        elif champion_right:
            self.champion_only += 1
        elif challenger_right:
            self.challenger_only += 1
        else:
            self.both_wrong += 1

    def summary(self, confidence: float = 0.95, min_pairs: int = 100) -> dict[str, Any]:
        n, b, c = self.n, self.champion_only, self.challenger_only
        out: dict[str, Any] = {
            "labelled_pairs": n,
            "both_right": self.both_right,
            "champion_only_right": b,
            "challenger_only_right": c,
            "both_wrong": self.both_wrong,
            "confidence": confidence,
            "min_pairs": min_pairs,
        }
        if n == 0:
            return {**out, "champion_accuracy": None, "challenger_accuracy": None, "difference": None,
                    "interval": None, "p_value": None, "verdict": "insufficient"}  # fmt: skip
        diff = (c - b) / n
        z = NormalDist().inv_cdf((1 + confidence) / 2)
        se = math.sqrt(max(0.0, (b + c) - (c - b) ** 2 / n)) / n
        low, high = diff - z * se, diff + z * se
        p_value = float(stats.binomtest(c, b + c, 0.5, alternative="greater").pvalue) if b + c else 1.0
        verdict = judged(n >= min_pairs, low, high)
        return {
            **out,
            "champion_accuracy": (self.both_right + b) / n,
            "challenger_accuracy": (self.both_right + c) / n,
            "difference": diff,
            "interval": [low, high],
            "p_value": p_value,
            "verdict": verdict,
        }


@dataclass(frozen=True, slots=True)
class _Predicted:
    model_name: str
    version: int
    predicted: str


class ShadowJoin:
    """Champion and challenger predictions of the same events joined with their labels."""

    def __init__(self, capacity: int = 50_000) -> None:
        self.champion: BoundedMap[_Predicted] = BoundedMap(capacity)
        self.challenger: BoundedMap[_Predicted] = BoundedMap(capacity)
        self.labels: BoundedMap[str] = BoundedMap(capacity)
        self.joined: BoundedMap[bool] = BoundedMap(capacity)
        self.counts: dict[Pair, PairedCounts] = {}

    def add_prediction(
        self, source_event_id: str, model_name: str, version: int, slot: str, predicted: str
    ) -> Pair | None:
        """Remember a prediction; the comparison it completed a pair of, if it did."""
        if slot not in (CHAMPION, CHALLENGER):
            return None  # a canary's: its events have no champion prediction to pair with
        side = self.challenger if slot == CHALLENGER else self.champion
        side.put(source_event_id, _Predicted(model_name, version, predicted))
        return self._join(source_event_id)

    def add_label(self, source_event_id: str, label: str) -> Pair | None:
        self.labels.put(source_event_id, label)
        return self._join(source_event_id)

    def _join(self, source: str) -> Pair | None:
        if source in self.joined:
            return None
        champion, challenger, label = self.champion.get(source), self.challenger.get(source), self.labels.get(source)
        if champion is None or challenger is None or label is None or champion.model_name != challenger.model_name:
            return None
        self.joined.put(source, True)
        key = (champion.model_name, champion.version, challenger.version)
        self.counts.setdefault(key, PairedCounts()).add(champion.predicted == label, challenger.predicted == label)
        for side in (self.champion, self.challenger, self.labels):
            side.pop(source, None)
        return key

    def comparisons(self, model_name: str) -> list[tuple[int, int, PairedCounts]]:
        """(champion version, challenger version, counts) of a model, newest challenger first."""
        rows = [(cv, sv, pc) for (m, cv, sv), pc in self.counts.items() if m == model_name]
        return sorted(rows, key=lambda r: (r[1], r[0]), reverse=True)


def decisive(counts: PairedCounts, policy: PromotionPolicy) -> dict[str, Any] | None:
    """The summary when the project's promotion policy has the challenger better (at its
    ``shadow_confidence``, on at least ``shadow_min_pairs`` pairs), else None: what monitoring
    announces on ``models.compared`` for the registry to promote it."""
    summary = counts.summary(policy.shadow_confidence, policy.shadow_min_pairs)
    return summary if summary["verdict"] == "challenger_better" else None


# -- canary verdicts ------------------------------------------------------------------------------

CANARY = "canary"  # a canary's slot and mode, and the action that starts one
CANARY_ENDS = ("promote", "rollback", "shadow", "canary_rollback")  # actions that end a model's canary


@dataclass
class ArmCounts:
    """Labelled outcomes of the two arms of one canary: the champion's entities and the canary's
    (different events, so two independent samples)."""

    champion_labelled: int = 0
    champion_right: int = 0
    canary_labelled: int = 0
    canary_right: int = 0

    def add(self, canary: bool, right: bool) -> None:
        if canary:
            self.canary_labelled += 1
            self.canary_right += right
        else:
            self.champion_labelled += 1
            self.champion_right += right

    def summary(self, confidence: float = 0.95, min_labels: int = 200, max_labels: int = 2000) -> dict[str, Any]:
        n1, r1, n2, r2 = self.champion_labelled, self.champion_right, self.canary_labelled, self.canary_right
        out: dict[str, Any] = {
            "champion_labelled": n1,
            "champion_right": r1,
            "challenger_labelled": n2,
            "challenger_right": r2,
            "confidence": confidence,
            "min_labels": min_labels,
            "max_labels": max_labels,
            "champion_accuracy": r1 / n1 if n1 else None,
            "challenger_accuracy": r2 / n2 if n2 else None,
        }
        if not n1 or not n2:
            return {**out, "difference": None, "interval": None, "p_value": None, "verdict": "insufficient",
                    "decisive": False}  # fmt: skip
        p1, p2 = r1 / n1, r2 / n2
        diff = p2 - p1
        z = NormalDist().inv_cdf((1 + confidence) / 2)
        se = math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
        low, high = diff - z * se, diff + z * se
        pooled = (r1 + r2) / (n1 + n2)
        se0 = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
        # A pooled variance of 0 means both arms all right (or all wrong), so d = 0: no evidence
        # either way, the p-value of z = 0.
        p_value = 1 - NormalDist().cdf(diff / se0) if se0 > 0 else 0.5
        verdict = judged(min(n1, n2) >= min_labels, low, high)
        decided = verdict in ("challenger_better", "champion_better") or (
            verdict == "no_difference" and n2 >= max_labels
        )
        return {
            **out,
            "difference": diff,
            "interval": [low, high],
            "p_value": p_value,
            "verdict": verdict,
            "decisive": decided,
        }


@dataclass(frozen=True, slots=True)
class ActiveCanary:
    """A model's canary: its version, the champion it runs beside, the share of entities it serves."""

    version: int
    champion: int
    traffic_fraction: float | None


@dataclass(frozen=True, slots=True)
class _Served:
    comparison: Pair
    canary: bool  # which arm
    predicted: str


class CanaryJoin:
    """The predictions each arm of a model's active canary served, joined with their labels.

    Which canary is active follows ``models.promoted`` (:meth:`follow`): a ``canary`` action starts
    one beside the model's latest champion (promote or rollback); any later promote, rollback,
    shadow or canary_rollback of the model ends it. A prediction counts when it is made while the
    canary is active: slot ``canary`` of the canary's version, or slot ``champion`` of the champion
    it runs beside (an older champion's still in flight are not its arm). Its label may come before
    or after it; a label of a prediction made while active still counts after the canary ended.
    """

    def __init__(self, capacity: int = 50_000) -> None:
        self.champions: dict[str, int] = {}  # model → latest champion version
        self.active: dict[str, ActiveCanary] = {}  # model → its canary
        self.predictions: BoundedMap[_Served] = BoundedMap(capacity)
        self.labels: BoundedMap[str] = BoundedMap(capacity)
        self.joined: BoundedMap[bool] = BoundedMap(capacity)
        self.counts: dict[Pair, ArmCounts] = {}  # in the order the canaries (last) started
        self.fractions: dict[Pair, float | None] = {}  # the latest traffic fraction of each comparison

    def follow(self, promotion: ModelPromoted, *, count: bool = True) -> ActiveCanary | None:
        """Track a ``models.promoted`` record (any action); the canary it ended, if it did.
        ``count``: a canary it starts gets its counts now (not while the history is replayed: all
        its canaries but the last are over)."""
        name = promotion.model_name
        if promotion.action in CHAMPION_ACTIONS:
            self.champions[name] = promotion.version
        if promotion.action != CANARY and promotion.action not in CANARY_ENDS:
            return None
        previous = self.active.pop(name, None)
        champion = self.champions.get(name, promotion.previous_version)
        if promotion.action == CANARY and champion is not None:
            canary = self.active[name] = ActiveCanary(promotion.version, champion, promotion.traffic_fraction)
            if count:
                self._start(name, canary)
            if previous is not None and (previous.version, previous.champion) == (canary.version, champion):
                return None  # the same canary, at a new traffic fraction
        return previous

    def rebuild(self, history: Iterable[ModelPromoted]) -> None:
        """Start-up: the active canaries and the champions from the replayed ``models.promoted``."""
        self.champions.clear()
        self.active.clear()
        for promotion in history:
            self.follow(promotion, count=False)
        for name, canary in self.active.items():
            self._start(name, canary)

    def _start(self, name: str, canary: ActiveCanary) -> None:
        key = (name, canary.champion, canary.version)
        self.counts[key] = self.counts.pop(key, ArmCounts())  # (re)started: the newest, last
        self.fractions[key] = canary.traffic_fraction

    def is_active(self, comparison: Pair) -> bool:
        canary = self.active.get(comparison[0])
        return canary is not None and (canary.champion, canary.version) == comparison[1:]

    def add_prediction(
        self, source_event_id: str, model_name: str, version: int, slot: str, predicted: str
    ) -> Pair | None:
        """Remember a prediction of an arm of the model's active canary; the comparison whose
        counts it joined, if it did."""
        canary = self.active.get(model_name)
        if canary is None or source_event_id in self.joined:
            return None
        if slot == CANARY and version == canary.version:
            arm = True
        elif slot == CHAMPION and version == canary.champion:
            arm = False
        else:
            return None
        comparison = (model_name, canary.champion, canary.version)
        self.predictions.put(source_event_id, _Served(comparison, arm, predicted))
        return self._join(source_event_id)

    def add_label(self, source_event_id: str, label: str) -> Pair | None:
        if source_event_id in self.joined:
            return None
        if not self.active and source_event_id not in self.predictions:
            return None  # no canary runs and none awaits this label: nothing to keep it for
        self.labels.put(source_event_id, label)
        return self._join(source_event_id)

    def _join(self, source: str) -> Pair | None:
        served, label = self.predictions.get(source), self.labels.get(source)
        if served is None or label is None:
            return None
        self.joined.put(source, True)
        self.counts.setdefault(served.comparison, ArmCounts()).add(served.canary, served.predicted == label)
        self.predictions.pop(source, None)
        self.labels.pop(source, None)
        return served.comparison

    def comparisons(self, model_name: str) -> list[tuple[int, int, float | None, ArmCounts]]:
        """(champion version, canary version, traffic fraction, counts) of a model, the canary
        started last first."""
        rows = [
            (cv, kv, self.fractions.get((m, cv, kv)), ac) for (m, cv, kv), ac in self.counts.items() if m == model_name
        ]
        return rows[::-1]


def canary_decisive(counts: ArmCounts, policy: PromotionPolicy) -> dict[str, Any] | None:
    """The summary when the project's promotion policy finds the canary's comparison decisive
    (``canary_confidence``, each arm at least ``canary_min_labels``): either arm better, or no
    difference once the canary's arm reached ``canary_max_labels``; else None. What monitoring
    announces on ``models.compared``: the registry promotes the canary, or withdraws it."""
    summary = counts.summary(policy.canary_confidence, policy.canary_min_labels, policy.canary_max_labels)
    return summary if summary["decisive"] else None


VERDICT_EVENTS = {SHADOW: "challenger-compared", CANARY: "canary-compared"}  # what a verdict's id derives from


def compared(
    mode: str, comparison: Pair, summary: dict[str, Any], traffic_fraction: float | None = None
) -> ChallengerCompared:
    """The ``models.compared`` record of a verdict: in shadow, the paired counts of a
    :meth:`PairedCounts.summary`; for a canary, the arm counts of an :meth:`ArmCounts.summary` (the
    paired counts 0, ``labelled_pairs`` both arms). Its id derives from the comparison and the
    verdict: a restart that reaches the verdict again announces the same event."""
    model_name, champion_version, challenger_version = comparison
    low, high = summary["interval"]
    if mode == CANARY:
        labelled = summary["champion_labelled"] + summary["challenger_labelled"]
    else:
        labelled = summary["labelled_pairs"]
    return ChallengerCompared(
        **envelope("monitoring", event_id=derived_event_id(VERDICT_EVENTS[mode], *comparison, summary["verdict"])),
        model_name=model_name,
        champion_version=champion_version,
        challenger_version=challenger_version,
        verdict=summary["verdict"],
        labelled_pairs=labelled,
        both_right=summary.get("both_right", 0),
        champion_only_right=summary.get("champion_only_right", 0),
        challenger_only_right=summary.get("challenger_only_right", 0),
        both_wrong=summary.get("both_wrong", 0),
        champion_accuracy=summary["champion_accuracy"],
        challenger_accuracy=summary["challenger_accuracy"],
        difference=summary["difference"],
        interval_low=low,
        interval_high=high,
        confidence=summary["confidence"],
        p_value=summary["p_value"],
        mode=mode,
        champion_labelled=summary.get("champion_labelled"),
        champion_right=summary.get("champion_right"),
        challenger_labelled=summary.get("challenger_labelled"),
        challenger_right=summary.get("challenger_right"),
        traffic_fraction=traffic_fraction,
    )
