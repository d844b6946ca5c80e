"""Shadow verdicts: paired counts of champion and challenger on the same labelled events, and the
interval and test computed from them, against a hand computation."""

from __future__ import annotations

import math

import pytest

from driftline_monitoring.comparison import PairedCounts, ShadowJoin


def test_a_prediction_pair_joins_its_label_whatever_the_order_and_only_once() -> None:
    join = ShadowJoin()
    join.add_label("e1", "approve")  # label first
    join.add_prediction("e1", "m", 1, "champion", "approve")
    join.add_prediction("e1", "m", 2, "challenger", "deny")
    join.add_prediction("e2", "m", 2, "challenger", "approve")  # challenger first
    join.add_prediction("e2", "m", 1, "champion", "deny")
    join.add_label("e2", "approve")
    join.add_label("e2", "approve")  # a label sent again does not count twice
    join.add_prediction("e3", "m", 1, "champion", "approve")  # no challenger: never paired
    join.add_label("e3", "approve")
    ((cv, sv, counts),) = join.comparisons("m")
    assert (cv, sv) == (1, 2)
    assert (counts.both_right, counts.champion_only, counts.challenger_only, counts.both_wrong) == (0, 1, 1, 0)
    assert join.comparisons("other") == []


def test_the_summary_matches_a_hand_computation() -> None:
    # 200 paired outcomes: both right 120, only the champion 10, only the challenger 40, both wrong 30.
    counts = PairedCounts(both_right=120, champion_only=10, challenger_only=40, both_wrong=30)
    s = counts.summary(confidence=0.95, min_pairs=100)
    assert s["labelled_pairs"] == 200
    assert s["champion_accuracy"] == pytest.approx(130 / 200)
    assert s["challenger_accuracy"] == pytest.approx(160 / 200)
    assert s["difference"] == pytest.approx(0.15)
    # Wald interval of a paired difference: se = sqrt(b + c - (c - b)^2 / n) / n
    se = math.sqrt(50 - 30**2 / 200) / 200
    assert se == pytest.approx(math.sqrt(45.5) / 200) == pytest.approx(0.0337268, abs=1e-7)
    assert s["interval"] == pytest.approx([0.15 - 1.959963984540054 * se, 0.15 + 1.959963984540054 * se])
    # McNemar exact, one-sided: P(X >= 40), X ~ Bin(50, 1/2)
    assert s["p_value"] == pytest.approx(sum(math.comb(50, k) for k in range(40, 51)) / 2**50)
    assert s["verdict"] == "challenger_better"


@pytest.mark.parametrize(
    ("counts", "min_pairs", "verdict"),
    [
        (PairedCounts(both_right=120, champion_only=40, challenger_only=10, both_wrong=30), 100, "champion_better"),
        (PairedCounts(both_right=120, champion_only=24, challenger_only=26, both_wrong=30), 100, "no_difference"),
        (PairedCounts(both_right=120, champion_only=10, challenger_only=40, both_wrong=30), 500, "insufficient"),
        (PairedCounts(), 1, "insufficient"),
    ],
)
def test_verdicts(counts: PairedCounts, min_pairs: int, verdict: str) -> None:
    assert counts.summary(min_pairs=min_pairs)["verdict"] == verdict


async def test_monitoring_announces_a_decisive_verdict_once() -> None:
    from driftline.events import envelope
    from driftline.project import PromotionPolicy
    from driftline.records import ChallengerCompared, LabelRecorded, PredictionMade
    from tests.unit.deployment.test_deployment_handlers import model
    from tests.unit.monitoring.test_monitoring_handlers import monitoring_of

    mon, _, _ = await monitoring_of(model(1))
    announced: list[ChallengerCompared] = []

    async def publish(record: ChallengerCompared) -> None:
        announced.append(record)

    mon.publish_verdict = publish
    mon.promotion_of = lambda _name: PromotionPolicy(shadow_min_pairs=40, shadow_confidence=0.95)

    def predicted(i: int, version: int, slot: str, cls: str) -> PredictionMade:
        return PredictionMade(**envelope("t"), source_event_id=f"e{i}", entity_id="c", model_name="loan-approval",
                              model_version=version, slot=slot, shadow=slot == "challenger", score=0.5,
                              predicted_class=cls, scoring_latency_ms=0.1)  # fmt: skip

    for i in range(60):  # the challenger right on all, the champion on every third
        await mon.on_prediction(predicted(i, 1, "champion", "approve" if i % 3 == 0 else "deny"))
        await mon.on_prediction(predicted(i, 2, "challenger", "approve"))
        await mon.on_label(LabelRecorded(**envelope("t"), labelled_event_id=f"e{i}", entity_id="c", label="approve"))
    (verdict,) = announced  # once, when it became decisive
    assert (verdict.champion_version, verdict.challenger_version, verdict.verdict) == (1, 2, "challenger_better")
    assert verdict.labelled_pairs == 40 and verdict.interval_low > 0
    assert verdict.challenger_only_right == 26 and verdict.champion_only_right == 0
