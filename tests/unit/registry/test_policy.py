"""The promotion policy and the rollback rule."""

from __future__ import annotations

import pytest

from driftline.project import PromotionPolicy
from driftline_registry.policy import decide, rollback_target

POLICY = PromotionPolicy(metric="accuracy", margin=0.02, floor=0.7)


def test_the_first_model_is_promoted_when_it_passes_the_floor() -> None:
    d = decide(POLICY, metrics={"accuracy": 0.75}, champion_version=None, evaluated_against=None, champion_metrics=None)
    assert d.promote and "first model" in d.reason


def test_a_candidate_below_the_floor_is_rejected_even_without_a_champion() -> None:
    d = decide(POLICY, metrics={"accuracy": 0.69}, champion_version=None, evaluated_against=None, champion_metrics=None)
    assert not d.promote and "below the floor" in d.reason
    assert d.comparison() == {
        "metric": "accuracy", "candidate_value": 0.69, "champion_value": None, "margin": 0.02, "floor": 0.7,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("candidate", "promote"),
    [(0.83, True), (0.82, True), (0.815, False), (0.80, False), (0.75, False)],
)
def test_a_candidate_must_beat_the_champion_on_the_same_holdout_by_the_margin(candidate: float, promote: bool) -> None:
    d = decide(
        POLICY,
        metrics={"accuracy": candidate},
        champion_version=3,
        evaluated_against=3,
        champion_metrics={"accuracy": 0.8},
    )
    assert d.promote is promote
    assert d.champion_value == 0.8 and d.candidate_value == candidate


def test_with_no_margin_a_tie_is_not_a_win() -> None:
    policy = PromotionPolicy(metric="accuracy", margin=0.0, floor=0.5)
    tie = decide(
        policy, metrics={"accuracy": 0.8}, champion_version=1, evaluated_against=1, champion_metrics={"accuracy": 0.8}
    )
    assert not tie.promote
    win = decide(
        policy, metrics={"accuracy": 0.81}, champion_version=1, evaluated_against=1, champion_metrics={"accuracy": 0.8}
    )
    assert win.promote


@pytest.mark.parametrize(("evaluated_against", "champion_metrics"), [(None, None), (2, {"accuracy": 0.5}), (3, None)])
def test_without_a_comparison_against_the_current_champion_the_candidate_is_rejected(
    evaluated_against: int | None, champion_metrics: dict[str, float] | None
) -> None:
    d = decide(
        POLICY,
        metrics={"accuracy": 0.99},
        champion_version=3,
        evaluated_against=evaluated_against,
        champion_metrics=champion_metrics,
    )
    assert not d.promote and "no comparison on the same holdout" in d.reason


def test_a_missing_metric_is_rejected() -> None:
    d = decide(POLICY, metrics={"f1": 0.9}, champion_version=None, evaluated_against=None, champion_metrics=None)
    assert not d.promote and "no accuracy" in d.reason


def test_for_log_loss_lower_is_better_and_the_floor_is_a_ceiling() -> None:
    policy = PromotionPolicy(metric="log_loss", margin=0.01, floor=0.6)
    assert not decide(
        policy, metrics={"log_loss": 0.7}, champion_version=None, evaluated_against=None, champion_metrics=None
    ).promote
    better = decide(
        policy, metrics={"log_loss": 0.3}, champion_version=1, evaluated_against=1, champion_metrics={"log_loss": 0.4}
    )
    assert better.promote
    worse = decide(
        policy, metrics={"log_loss": 0.45}, champion_version=1, evaluated_against=1, champion_metrics={"log_loss": 0.4}
    )
    assert not worse.promote


def test_rollback_goes_to_the_previous_champion_and_skips_rolled_back_versions() -> None:
    # v1, v2, v3 promoted in turn; rolling back from v3 gives v2, then (v3 rolled back) v1.
    assert rollback_target([1, 2, 3], current=3, excluded=set()) == 2
    assert rollback_target([1, 2, 3, 2], current=2, excluded={3}) == 1
    assert rollback_target([1, 2, 3, 2, 1], current=1, excluded={3, 2}) is None
    assert rollback_target([1], current=1, excluded=set()) is None
    # A rolled-back version promoted again is a champion like any other.
    assert rollback_target([1, 2, 1, 2], current=2, excluded=set()) == 1


def test_the_comparison_with_the_champion_uses_the_candidates_metrics_on_the_same_examples() -> None:
    # On its whole holdout the candidate looks better, but on the examples the champion was
    # scored on (those after the champion's training data) it is worse: rejected.
    d = decide(
        POLICY,
        metrics={"accuracy": 0.9},
        champion_version=3,
        evaluated_against=3,
        champion_metrics={"accuracy": 0.85},
        comparison_metrics={"accuracy": 0.8},
    )
    assert not d.promote and (d.candidate_value, d.champion_value) == (0.8, 0.85)
    better = decide(
        POLICY,
        metrics={"accuracy": 0.75},
        champion_version=3,
        evaluated_against=3,
        champion_metrics={"accuracy": 0.8},
        comparison_metrics={"accuracy": 0.9},
    )
    assert better.promote and better.candidate_value == 0.9


def test_the_floor_applies_to_the_whole_holdout() -> None:
    d = decide(
        POLICY,
        metrics={"accuracy": 0.65},
        champion_version=3,
        evaluated_against=3,
        champion_metrics={"accuracy": 0.5},
        comparison_metrics={"accuracy": 0.95},
    )
    assert not d.promote and "below the floor" in d.reason


@pytest.mark.parametrize(
    ("candidate", "champion", "n", "promote"),
    [
        (0.843, 0.8235, 51, False),  # a 2-point win on 51 examples is noise
        (0.843, 0.8235, 5000, True),  # the same win on 5,000 is not
        (0.95, 0.45, 50, True),  # a sudden drift's emergency run wins on any comparison size
    ],
)
def test_a_win_within_the_comparisons_noise_is_not_promoted(
    candidate: float, champion: float, n: int, promote: bool
) -> None:
    policy = PromotionPolicy(metric="accuracy", margin=0.0, floor=0.5, confidence=0.9)
    d = decide(
        policy,
        metrics={"accuracy": candidate},
        champion_version=2,
        evaluated_against=2,
        champion_metrics={"accuracy": champion},
        n_compared=n,
    )
    assert d.promote is promote, d.reason
    if not promote:
        assert f"within the noise of {n} examples" in d.reason
    # Without the comparison's size (records from before it was carried), the margin alone decides.
    legacy = decide(
        policy, metrics={"accuracy": candidate}, champion_version=2, evaluated_against=2,
        champion_metrics={"accuracy": champion},
    )  # fmt: skip
    assert legacy.promote


def test_with_paired_counts_the_decision_is_mcnemars() -> None:
    policy = PromotionPolicy(metric="accuracy", margin=0.0, floor=0.5, confidence=0.9)

    def with_counts(wins: int, losses: int, n: int = 375) -> bool:
        champion = 0.90
        candidate = champion + (wins - losses) / n
        return decide(
            policy,
            metrics={"accuracy": candidate},
            champion_version=2,
            evaluated_against=2,
            champion_metrics={"accuracy": champion},
            n_compared=n,
            wins=wins,
            losses=losses,
        ).promote

    # Nine net wins of 375 (2.4 points): significant when the models disagree on few examples...
    assert with_counts(12, 3)  # 9 > 1.28 * sqrt(15) = 4.96
    # ... noise when they disagree on many (the unpaired bound would reject both).
    assert not with_counts(60, 51)  # 9 < 1.28 * sqrt(111) = 13.5
    assert not with_counts(3, 3)


def test_a_refresh_is_promoted_unless_it_is_significantly_worse() -> None:
    """promotion.refresh_confidence reverses the burden of proof for a refresh (the champion's window
    on newer data): within the noise it is promoted, where any other candidate must be better beyond
    promotion.confidence; clearly worse, it is rejected; the floor and the same-holdout rule hold."""
    policy = PromotionPolicy(metric="accuracy", margin=0.0, floor=0.5, confidence=0.75, refresh_confidence=0.75)

    def judge(wins: int, losses: int, *, refresh: bool, p: PromotionPolicy = policy, against: int = 2) -> bool:
        champion, n = 0.85, 375
        return decide(
            p, metrics={"accuracy": champion + (wins - losses) / n}, champion_version=2, evaluated_against=against,
            champion_metrics={"accuracy": champion}, n_compared=n, wins=wins, losses=losses, refresh=refresh,
        ).promote  # fmt: skip

    assert judge(22, 20, refresh=True) and not judge(22, 20, refresh=False)  # better within the noise
    assert judge(20, 20, refresh=True) and not judge(20, 20, refresh=False)  # a tie
    assert judge(20, 24, refresh=True)  # worse by 4 < 0.674 * sqrt(44) = 4.47
    assert not judge(20, 25, refresh=True)  # worse by 5 > 0.674 * sqrt(45) = 4.52
    assert judge(30, 15, refresh=True) and judge(30, 15, refresh=False)  # clearly better: both
    assert not judge(22, 20, refresh=True, against=1)  # not compared with the current champion
    off = policy.model_copy(update={"refresh_confidence": 0.0})
    assert not judge(22, 20, refresh=True, p=off)  # off: judged like any candidate
    below = decide(
        policy, metrics={"accuracy": 0.45}, champion_version=2, evaluated_against=2,
        champion_metrics={"accuracy": 0.45}, n_compared=375, wins=0, losses=0, refresh=True,
    )  # fmt: skip
    assert not below.promote and "below the floor" in below.reason
    tie = decide(
        policy, metrics={"accuracy": 0.85}, champion_version=2, evaluated_against=2,
        champion_metrics={"accuracy": 0.85}, n_compared=375, wins=20, losses=20, refresh=True,
    )  # fmt: skip
    assert "a refresh" in tie.reason and "not worse" in tie.reason


def test_refresh_confidence_is_off_or_at_least_a_half() -> None:
    assert PromotionPolicy().refresh_confidence == 0
    assert PromotionPolicy(refresh_confidence=0.5).refresh_confidence == 0.5
    with pytest.raises(ValueError, match="refresh_confidence"):
        PromotionPolicy(refresh_confidence=0.3)
