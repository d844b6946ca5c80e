"""Shadow verdicts: the challenger against the champion on the same labelled events.

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

State is in memory and bounded (``capacity`` events awaiting their partners): a restart of
monitoring starts the counts again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

from scipy import stats

from driftline.project import PromotionPolicy
from driftline_monitoring.drift import BoundedMap

CHAMPION, CHALLENGER = "champion", "challenger"
Pair = tuple[str, int, int]  # (model, champion version, challenger version)


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
        if n < min_pairs:
            verdict = "insufficient"
        elif low > 0:
            verdict = "challenger_better"
        elif high < 0:
            verdict = "champion_better"
        else:
            verdict = "no_difference"
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
