"""The promotion policy and the rollback rule, as pure functions.

Promotion (from the project file: metric, margin, floor, confidence): a candidate must reach the
floor on its holdout; the first model of a name is promoted when it does; after that a candidate
is promoted only if it beats the champion **on the same holdout** (the run evaluated the current
champion on it) by at least the margin and, for a proportion metric, by more than sampling
noise. With the run's paired counts (``wins``: comparison examples only the candidate predicts
right; ``losses``: only the champion) that is McNemar's one-sided test: wins - losses must exceed
z(confidence) x sqrt(wins + losses). Without them (older records) it is z(confidence) standard
errors of the difference of two independent proportions on ``n_compared`` examples, which is
conservative (both scores come from the same examples). Without such a bound a candidate fitted
on a few hundred examples after a false alarm replaces a champion fitted on thousands whenever it
wins a 50-example comparison by luck. The comparison uses the candidate's metrics on the very
examples the champion was scored on (``comparison_metrics``: the holdout examples after the end
of the champion's training data), not its whole holdout. A candidate that did not compare itself
with the current champion is rejected: there is no fair comparison to decide on.

A **refresh** (``refresh``: a drift run of a slow change's refresh chain on the whole recent
selection, ``ModelTrained.refresh``) is the champion's window moved on to newer data, not a model
of a new concept: with ``promotion.refresh_confidence`` above 0 the burden of proof is reversed,
and it is promoted (past the floor, on the same holdout) unless the champion is better beyond
z(refresh_confidence) standard errors (McNemar on the paired counts; without them the unpaired
bound). Monitoring's refresh chain goes on at its spacing only after a refresh better beyond the
same bound (``driftline_monitoring.lifecycle.refresh_gained``), so a refresh let through on the
noise counts as a miss there.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import TypedDict

from driftline.project import PromotionPolicy

# Metrics where smaller is better; for them the floor is a ceiling.
LOWER_IS_BETTER = frozenset({"log_loss", "brier", "brier_score", "mse", "rmse", "mae"})
# Metrics that are proportions of the compared examples (their noise is binomial).
PROPORTIONS = frozenset({"accuracy", "precision", "recall", "f1", "balanced_accuracy"})


def paired_noise_bound(wins: int, losses: int, n: int, confidence: float) -> float:
    """McNemar: the accuracy improvement, (wins - losses) / n, that z(confidence) standard errors
    of wins - losses under "equally good" (sqrt(wins + losses)) reach."""
    if confidence <= 0 or n <= 0:
        return 0.0
    return NormalDist().inv_cdf(confidence) * math.sqrt(wins + losses) / n


def noise_bound(candidate: float, champion: float, n: int, confidence: float) -> float:
    """z(confidence) standard errors of the difference of two proportions on ``n`` examples."""
    if confidence <= 0 or n <= 0:
        return 0.0
    p1, p2 = min(max(candidate, 0.0), 1.0), min(max(champion, 0.0), 1.0)
    z = NormalDist().inv_cdf(confidence)
    return z * math.sqrt((p1 * (1 - p1) + p2 * (1 - p2)) / n)


# 0.82 - 0.80 is 0.01999… in floating point: a margin reached exactly counts as reached.
_TOLERANCE = 1e-9


class Comparison(TypedDict):
    """What a decision compared: its records (ModelPromoted, ModelRejected) carry these fields."""

    metric: str
    candidate_value: float | None
    champion_value: float | None
    margin: float
    floor: float


@dataclass(frozen=True, slots=True)
class Decision:
    promote: bool
    reason: str
    metric: str
    candidate_value: float | None
    champion_value: float | None
    margin: float
    floor: float

    def comparison(self) -> Comparison:
        return {
            "metric": self.metric,
            "candidate_value": self.candidate_value,
            "champion_value": self.champion_value,
            "margin": self.margin,
            "floor": self.floor,
        }


def _fmt(x: float) -> str:
    return f"{x:.4f}"


def decide(
    policy: PromotionPolicy,
    *,
    metrics: Mapping[str, float],
    champion_version: int | None,
    evaluated_against: int | None,
    champion_metrics: Mapping[str, float] | None,
    comparison_metrics: Mapping[str, float] | None = None,
    n_compared: int | None = None,
    wins: int | None = None,
    losses: int | None = None,
    refresh: bool = False,
) -> Decision:
    """Promote or reject a candidate with ``metrics`` given the registry's current champion.

    ``comparison_metrics`` are the candidate's metrics on the examples ``champion_metrics`` come
    from; None (runs that compared on the whole holdout) means ``metrics``. ``refresh``: the run
    is a refresh (see the module doc and ``PromotionPolicy.refresh_confidence``).
    """
    metric, margin, floor = policy.metric, policy.margin, policy.floor
    lower = metric in LOWER_IS_BETTER

    def result(promote: bool, reason: str, candidate: float | None, champion: float | None = None) -> Decision:
        return Decision(promote, reason, metric, candidate, champion, margin, floor)

    candidate = metrics.get(metric)
    if candidate is None:
        return result(False, f"the candidate has no {metric} on its holdout", None)
    if (candidate > floor) if lower else (candidate < floor):
        bound = "above the ceiling" if lower else "below the floor"
        return result(False, f"{metric} {_fmt(candidate)} is {bound} {_fmt(floor)}", candidate)
    if champion_version is None:
        return result(True, f"first model: {metric} {_fmt(candidate)} passes the floor {_fmt(floor)}", candidate)
    champion = (champion_metrics or {}).get(metric)
    if evaluated_against != champion_version or champion is None:
        compared = f"v{evaluated_against}" if evaluated_against is not None else "no champion"
        return result(
            False,
            f"the run compared itself with {compared} but the champion is v{champion_version}: "
            "no comparison on the same holdout",
            candidate,
        )
    contender = (metrics if comparison_metrics is None else comparison_metrics).get(metric)
    if contender is None:
        return result(False, f"the candidate has no {metric} on the examples the champion was scored on", None)
    improvement = (champion - contender) if lower else (contender - champion)
    verdict = f"{metric} {_fmt(contender)} vs champion v{champion_version}'s {_fmt(champion)} on the same holdout"
    paired = wins is not None and losses is not None and metric == "accuracy"

    def noise_at(confidence: float) -> float:
        if n_compared is None or metric not in PROPORTIONS:
            return 0.0
        if paired:
            assert wins is not None and losses is not None
            return paired_noise_bound(wins, losses, n_compared, confidence)
        return noise_bound(contender, champion, n_compared, confidence)

    if refresh and policy.refresh_confidence > 0:
        # A refresh: the champion's window on newer data. Promoted unless it is clearly worse.
        allowed = noise_at(policy.refresh_confidence)
        tail = f"refresh, confidence {policy.refresh_confidence:g}"
        if improvement < 0 and -improvement > allowed + _TOLERANCE:
            return result(
                False,
                f"{verdict}: a refresh worse by {_fmt(-improvement)}, beyond the noise of {n_compared} "
                f"examples ({_fmt(allowed)}, {tail})",
                contender,
                champion,
            )
        return result(
            True,
            f"{verdict}: a refresh, {_fmt(improvement)} (not worse beyond the noise {_fmt(allowed)}, {tail})",
            contender,
            champion,
        )
    noise = noise_at(policy.confidence)
    if noise > 0 and improvement > 0 and improvement >= margin - _TOLERANCE and improvement <= noise:
        return result(
            False,
            f"{verdict}: better by {_fmt(improvement)}, within the noise of {n_compared} examples "
            f"({_fmt(noise)} at confidence {policy.confidence:g})",
            contender,
            champion,
        )
    if improvement > 0 and improvement >= margin - _TOLERANCE:
        beyond = f", beyond the noise {_fmt(noise)}" if noise > 0 else ""
        return result(
            True, f"{verdict}: better by {_fmt(improvement)} (margin {_fmt(margin)}{beyond})", contender, champion
        )
    return result(
        False, f"{verdict}: does not beat it by the margin {_fmt(margin)} ({_fmt(improvement)})", contender, champion
    )


def rollback_target(champions: Sequence[int], current: int | None, excluded: set[int]) -> int | None:
    """The most recent earlier champion that is not the current one and was not rolled back.

    ``champions`` lists the versions that became champion, oldest first (with repeats).
    """
    for version in reversed(champions):
        if version != current and version not in excluded:
            return version
    return None
