"""Canary verdicts: the two arms of a traffic split (the champion's entities and the canary's),
joined with their labels while the canary is active, and the interval and test computed from
them, against a hand computation; monitoring announces a decisive one once."""

from __future__ import annotations

import math
from dataclasses import replace
from statistics import NormalDist

import pytest

from driftline.events import derived_event_id, envelope
from driftline.project import PromotionPolicy
from driftline.records import ChallengerCompared, LabelRecorded, ModelPromoted, PredictionMade
from driftline_monitoring.api import MonitoringDeps, comparison
from driftline_monitoring.comparison import ArmCounts, CanaryJoin, canary_decisive
from driftline_monitoring.handlers import Monitoring
from tests.unit.deployment.synthetic import MODEL_NAME
from tests.unit.monitoring.test_monitoring_handlers import POLICY, model, monitoring_of, promotion

Z95 = 1.959963984540054


def test_the_arm_summary_matches_a_hand_computation() -> None:
    # The champion right on 300 of its 400 labelled events, the canary on 255 of its 300.
    counts = ArmCounts(champion_labelled=400, champion_right=300, canary_labelled=300, canary_right=255)
    s = counts.summary(confidence=0.95, min_labels=200, max_labels=2000)
    arms = (s["champion_labelled"], s["champion_right"], s["challenger_labelled"], s["challenger_right"])
    assert arms == (400, 300, 300, 255)
    assert s["champion_accuracy"] == pytest.approx(0.75)
    assert s["challenger_accuracy"] == pytest.approx(0.85)
    assert s["difference"] == pytest.approx(0.10)
    # Wald interval of a difference of independent proportions.
    se = math.sqrt(0.75 * 0.25 / 400 + 0.85 * 0.15 / 300)
    assert se == pytest.approx(math.sqrt(0.00089375)) == pytest.approx(0.0298957, abs=1e-7)
    assert s["interval"] == pytest.approx([0.10 - Z95 * se, 0.10 + Z95 * se])
    # Pooled two-proportion z-test, one-sided (the canary is better).
    pooled = 555 / 700
    z = 0.10 / math.sqrt(pooled * (1 - pooled) * (1 / 400 + 1 / 300))
    assert z == pytest.approx(3.2308, abs=1e-4)
    assert s["p_value"] == pytest.approx(1 - NormalDist().cdf(z)) == pytest.approx(6.172e-4, abs=1e-7)
    assert s["verdict"] == "challenger_better" and s["decisive"]


@pytest.mark.parametrize(
    ("counts", "min_labels", "max_labels", "verdict", "is_decisive"),
    [
        (ArmCounts(400, 340, 300, 225), 200, 2000, "champion_better", True),
        (ArmCounts(400, 300, 300, 225), 200, 2000, "no_difference", False),  # the canary arm short of max
        (ArmCounts(400, 300, 300, 225), 200, 300, "no_difference", True),  # ... and at it
        (ArmCounts(400, 300, 300, 255), 200, 300, "challenger_better", True),
        (ArmCounts(199, 100, 300, 300), 200, 2000, "insufficient", False),  # the champion arm short
        (ArmCounts(400, 100, 199, 199), 200, 150, "insufficient", False),  # the canary arm short
        (ArmCounts(400, 300), 1, 1, "insufficient", False),  # no canary label yet
        (ArmCounts(), 1, 1, "insufficient", False),
    ],
)
def test_verdicts(counts: ArmCounts, min_labels: int, max_labels: int, verdict: str, is_decisive: bool) -> None:
    s = counts.summary(min_labels=min_labels, max_labels=max_labels)
    assert (s["verdict"], s["decisive"]) == (verdict, is_decisive)
    policy = PromotionPolicy(canary_min_labels=min_labels, canary_max_labels=max_labels)
    assert (canary_decisive(counts, policy) is not None) == is_decisive


def test_no_variance_at_all_gives_no_evidence_either_way() -> None:
    s = ArmCounts(300, 300, 300, 300).summary(min_labels=200)
    assert s["difference"] == 0 and s["interval"] == [0, 0]
    assert s["p_value"] == 0.5 and s["verdict"] == "no_difference"
    s = ArmCounts(300, 0, 300, 0).summary(min_labels=200)
    assert s["p_value"] == 0.5 and s["verdict"] == "no_difference"


def promoted(version: int, action: str, fraction: float | None = None) -> ModelPromoted:
    return replace(promotion(model(), version, action=action), traffic_fraction=fraction)


def test_the_join_counts_only_the_active_canarys_arms_with_their_labels_in_either_order() -> None:
    join = CanaryJoin()
    join.follow(promoted(1, "promote"))
    join.add_prediction("before", MODEL_NAME, 1, "champion", "approve")  # no canary yet: not counted
    join.add_label("before", "approve")
    join.follow(promoted(2, "canary", 0.2))
    assert join.is_active((MODEL_NAME, 1, 2))
    join.add_label("e1", "approve")  # label first
    assert join.add_prediction("e1", MODEL_NAME, 1, "champion", "approve") == (MODEL_NAME, 1, 2)
    join.add_prediction("e2", MODEL_NAME, 2, "canary", "approve")  # prediction first
    assert join.add_label("e2", "approve") == (MODEL_NAME, 1, 2)
    join.add_label("e2", "approve")  # sent again: counted once
    join.add_prediction("e2", MODEL_NAME, 2, "canary", "approve")  # a replayed duplicate
    join.add_prediction("e3", MODEL_NAME, 2, "canary", "deny")
    join.add_label("e3", "approve")
    join.add_prediction("e4", MODEL_NAME, 0, "champion", "approve")  # another champion version's
    join.add_prediction("e5", MODEL_NAME, 3, "canary", "approve")  # not the canary's version
    join.add_prediction("e6", MODEL_NAME, 2, "challenger", "approve")  # a shadow slot
    join.add_prediction("e7", "other-model", 1, "champion", "approve")  # no canary of that model
    for e in ("e4", "e5", "e6", "e7"):
        assert join.add_label(e, "approve") is None
    join.add_prediction("late", MODEL_NAME, 1, "champion", "deny")  # made while active, labelled after
    join.follow(promoted(2, "canary_rollback"))
    assert not join.is_active((MODEL_NAME, 1, 2))
    join.add_label("late", "approve")  # still counts: it was served during the canary
    join.add_prediction("after", MODEL_NAME, 2, "canary", "approve")  # the canary ended: not counted
    join.add_prediction("after-c", MODEL_NAME, 1, "champion", "approve")
    join.add_label("after", "approve")
    join.add_label("after-c", "approve")
    ((cv, kv, fraction, counts),) = join.comparisons(MODEL_NAME)
    assert (cv, kv, fraction) == (1, 2, 0.2)
    assert counts == ArmCounts(champion_labelled=2, champion_right=1, canary_labelled=2, canary_right=1)
    assert join.comparisons("other-model") == []


@pytest.mark.parametrize("ends", ["promote", "rollback", "shadow", "canary_rollback", "canary"])
def test_any_later_promotion_of_the_model_ends_its_canary(ends: str) -> None:
    join = CanaryJoin()
    join.follow(promoted(1, "promote"))
    join.follow(promoted(2, "canary", 0.1))
    ended = join.follow(promoted(3, ends, 0.3 if ends == "canary" else None))
    assert ended is not None and ended.version == 2 and not join.is_active((MODEL_NAME, 1, 2))
    if ends == "canary":  # another canary beside the same champion: the newest comparison, first
        assert join.is_active((MODEL_NAME, 1, 3))
        assert [(cv, kv, f) for cv, kv, f, _ in join.comparisons(MODEL_NAME)] == [(1, 3, 0.3), (1, 2, 0.1)]
    # The same canary at a new traffic fraction goes on.
    join.follow(promoted(4, "canary", 0.1))
    assert join.follow(promoted(4, "canary", 0.5)) is None
    canary = join.active[MODEL_NAME]
    assert (canary.version, canary.traffic_fraction) == (4, 0.5)
    assert canary.champion == (3 if ends in ("promote", "rollback") else 1)  # the latest champion


def test_the_active_canary_is_rebuilt_from_the_replayed_promotions() -> None:
    join = CanaryJoin()
    join.rebuild(
        [
            promoted(1, "promote"),
            promoted(2, "canary", 0.1),
            promoted(2, "canary_rollback"),
            promoted(3, "promote"),
            promoted(4, "canary", 0.25),
        ]
    )
    assert join.is_active((MODEL_NAME, 3, 4)) and join.active[MODEL_NAME].traffic_fraction == 0.25
    assert [(cv, kv) for cv, kv, _, _ in join.comparisons(MODEL_NAME)] == [(3, 4)]  # the ended canary is gone
    join.rebuild([promoted(1, "promote"), promoted(2, "canary", 0.1), promoted(2, "promote")])
    assert join.active == {} and join.champions == {MODEL_NAME: 2}


# -- Monitoring --------------------------------------------------------------------------------


def predicted(i: int, version: int, slot: str, cls: str) -> PredictionMade:
    return PredictionMade(**envelope("t"), source_event_id=f"e{i}", entity_id=f"c{i}", model_name=MODEL_NAME,
                          model_version=version, slot=slot, shadow=False, score=0.9 if cls == "approve" else 0.1,
                          predicted_class=cls, scoring_latency_ms=0.1)  # fmt: skip


def labelled(i: int) -> LabelRecorded:
    return LabelRecorded(**envelope("t"), labelled_event_id=f"e{i}", entity_id=f"c{i}", label="approve")


async def canary_monitoring(
    history: list[ModelPromoted] | None = None,
) -> tuple[Monitoring, list[ChallengerCompared]]:
    mon, _, _ = await monitoring_of(model(), history=history)
    announced: list[ChallengerCompared] = []

    async def publish(record: ChallengerCompared) -> None:
        announced.append(record)

    mon.publish_verdict = publish
    mon.promotion_of = lambda _name: PromotionPolicy(canary_min_labels=40, canary_confidence=0.95)
    return mon, announced


async def serve(mon: Monitoring, events: range, *, canary: int = 2) -> None:
    """Even events served by champion v1 (right on every other one), odd ones by the canary
    (always right); each prediction followed by its label."""
    for i in events:
        if i % 2 == 0:
            await mon.on_prediction(predicted(i, 1, "champion", "approve" if i % 4 == 0 else "deny"))
        else:
            await mon.on_prediction(predicted(i, canary, "canary", "approve"))
        await mon.on_label(labelled(i))


async def test_monitoring_announces_a_decisive_canary_verdict_once() -> None:
    mon, announced = await canary_monitoring()
    await mon.on_promoted(promoted(2, "canary", 0.25))
    assert mon.monitors[MODEL_NAME].reference.version == 1  # the canary is not monitored
    await serve(mon, range(120))
    (verdict,) = announced  # once, when both arms reached 40 labels (event 79)
    assert verdict.mode == "canary" and verdict.verdict == "challenger_better"
    assert (verdict.model_name, verdict.champion_version, verdict.challenger_version) == (MODEL_NAME, 1, 2)
    assert (verdict.champion_labelled, verdict.champion_right) == (40, 20)
    assert (verdict.challenger_labelled, verdict.challenger_right) == (40, 40)
    assert verdict.labelled_pairs == 80 and verdict.traffic_fraction == 0.25
    paired = (verdict.both_right, verdict.champion_only_right, verdict.challenger_only_right, verdict.both_wrong)
    assert paired == (0, 0, 0, 0)
    assert verdict.champion_accuracy == 0.5 and verdict.challenger_accuracy == 1.0 and verdict.difference == 0.5
    se = math.sqrt(0.25 / 40)
    assert (verdict.interval_low, verdict.interval_high) == pytest.approx((0.5 - Z95 * se, 0.5 + Z95 * se))
    assert verdict.event_id == derived_event_id("canary-compared", MODEL_NAME, 1, 2, "challenger_better")
    # The canary's predictions never reach the champion's monitor: only its own 60 are joined.
    assert mon.monitors[MODEL_NAME].performance.total == 60
    # The API lists the canary beside the (empty) shadow comparisons.
    deps = MonitoringDeps(mon, None, POLICY, 10)  # type: ignore[arg-type]
    doc = await comparison(MODEL_NAME, deps, 0.95, 100, None, None, None)
    assert doc["comparisons"] == []
    (row,) = doc["canaries"]
    assert (row["champion_version"], row["challenger_version"], row["traffic_fraction"]) == (1, 2, 0.25)
    assert (row["champion_labelled"], row["challenger_labelled"], row["verdict"]) == (60, 60, "challenger_better")
    assert row["active"] and row["decisive"]
    assert row["min_labels"] == 40  # the model's policy


async def test_a_canary_rollback_ends_the_comparison() -> None:
    mon, announced = await canary_monitoring()
    await mon.on_promoted(promoted(2, "canary", 0.25))
    await serve(mon, range(40))
    await mon.on_promoted(promoted(2, "canary_rollback"))
    await serve(mon, range(40, 200))  # the canary's slot would win, but it ended: not counted
    ((_, _, _, counts),) = mon.canary.comparisons(MODEL_NAME)
    assert (counts.champion_labelled, counts.canary_labelled) == (20, 20)
    assert announced == []


async def test_an_ended_canarys_late_labels_are_counted_but_never_announced() -> None:
    mon, announced = await canary_monitoring()
    await mon.on_promoted(promoted(2, "canary", 0.25))
    for i in range(100):  # predictions made while the canary is active, not yet labelled
        await mon.on_prediction(
            predicted(i, 1, "champion", "deny") if i % 2 == 0 else predicted(i, 2, "canary", "approve")
        )
    await mon.on_promoted(promoted(3, "promote"))
    for i in range(100):
        await mon.on_label(labelled(i))
    ((_, _, _, counts),) = mon.canary.comparisons(MODEL_NAME)
    assert counts == ArmCounts(50, 0, 50, 50) and announced == []


async def test_at_start_up_the_active_canary_is_followed_again() -> None:
    v1 = promotion(model(), 1)
    mon, announced = await canary_monitoring(history=[v1, promoted(2, "canary", 0.5)])
    assert mon.monitors[MODEL_NAME].reference.version == 1
    await serve(mon, range(80))
    (verdict,) = announced
    assert (verdict.champion_version, verdict.challenger_version, verdict.traffic_fraction) == (1, 2, 0.5)
    mon, _ = await canary_monitoring(history=[v1, promoted(2, "canary", 0.5), promoted(2, "canary_rollback")])
    assert mon.canary.active == {}


def test_labels_are_kept_for_a_canary_only() -> None:
    join = CanaryJoin()
    join.follow(promoted(1, "promote"))
    join.add_label("e-1", "approve")  # no canary runs, no prediction awaits it
    assert "e-1" not in join.labels
    join.follow(promoted(2, "canary", 0.5))
    join.add_label("e-2", "approve")  # it may come before its prediction
    assert join.add_prediction("e-2", MODEL_NAME, 2, "canary", "approve") == (MODEL_NAME, 1, 2)
