"""Deployment's pure decisions: which slot a promotion fills and what is announced after it."""

from __future__ import annotations

from typing import Any

from driftline.events import envelope
from driftline.records import ModelPromoted
from driftline_deployment.policy import (
    CHALLENGER,
    CHAMPION,
    Announcement,
    canary_rolled_back,
    load_failed,
    plan_from_history,
    refused,
    slot_for,
    swapped,
    unknown_action,
)


def promotion(version: int, action: str = "promote", **kw: Any) -> ModelPromoted:
    return ModelPromoted(
        **envelope("test-registry"),
        model_name=kw.pop("model_name", "m"),
        version=version,
        run_id=f"run-{version}",
        artifact_bucket="b",
        artifact_key=f"k{version}",
        artifact_sha256="0" * 64,
        metadata_key=f"m{version}",
        metadata_sha256="0" * 64,
        feature_names=("a", "b"),
        action=action,
        reason=kw.pop("reason", "better"),
        actor="test",
        metrics={},
        **kw,
    )


def test_shadow_fills_the_challenger_slot_and_every_other_action_the_champions() -> None:
    assert slot_for("shadow") == slot_for("canary") == slot_for("canary_rollback") == CHALLENGER
    assert slot_for("promote") == slot_for("rollback") == slot_for("replace") == CHAMPION


def test_an_unknown_action_is_refused_and_a_known_one_is_not() -> None:
    assert unknown_action(promotion(1)) is None
    refusal = unknown_action(promotion(3, "replace"))
    assert refusal is not None
    assert (refusal.slot, refusal.status, refusal.version) == (CHAMPION, "failed", 3)
    assert "unknown action 'replace'" in refusal.reason
    assert load_failed(promotion(2, "shadow"), "boom", 0.5) == Announcement(CHALLENGER, "failed", "boom", 2, 0.5)


def test_a_swap_announces_the_load_then_the_challenger_it_emptied() -> None:
    (only,) = swapped(promotion(2, reason="r"), load_seconds=0.25, retired_version=None, startup=False)
    assert only == Announcement(CHAMPION, "loaded", "promote v2: r", 2, 0.25)
    loaded, unloaded = swapped(promotion(2, "rollback", reason="r"), load_seconds=0.1, retired_version=3, startup=True)
    assert (loaded.status, loaded.reason) == ("rolled_back", "rebuilt from models.promoted at start-up; rollback v2: r")
    assert unloaded == Announcement(
        CHALLENGER, "unloaded", "challenger v3 was superseded: rollback v2 to champion", 3, None
    )
    _, became = swapped(promotion(3), load_seconds=0.1, retired_version=3, startup=False)
    assert "challenger v3 became the champion" in became.reason


def test_the_startup_plan_is_per_model_and_tries_at_most_the_fallback_depth() -> None:
    history = [promotion(v) for v in (1, 2, 3)] + [promotion(1, model_name="other")]
    plans = plan_from_history(history)
    assert sorted(plans) == ["m", "other"]
    assert [p.version for p in plans["m"].fallbacks(2)] == [3, 2]
    assert plans["other"].challenger_beside(None) is None
    shadow = promotion(4, "shadow")
    plan = plan_from_history([*history, shadow])["m"]
    assert plan.challenger_beside(None) is shadow  # no champion loaded: the challenger still shadows
    assert plan.challenger_beside(plan.champions[0]) is shadow


def test_a_canary_needs_a_traffic_fraction_in_zero_to_one() -> None:
    assert refused(promotion(2, "canary", traffic_fraction=0.25)) is None
    assert refused(promotion(2, "canary", traffic_fraction=1.0)) is None
    assert refused(promotion(2, "canary_rollback")) is None
    for fraction in (None, 0.0, 1.5):
        refusal = refused(promotion(2, "canary", traffic_fraction=fraction))
        assert refusal is not None and (refusal.slot, refusal.status, refusal.version) == (CHALLENGER, "failed", 2)
    assert refused(promotion(2, "replace")) == unknown_action(promotion(2, "replace"))


def test_a_canary_load_names_its_share_and_its_rollback_is_announced_rolled_back() -> None:
    (loaded,) = swapped(
        promotion(2, "canary", reason="try", traffic_fraction=0.1),
        load_seconds=0.2,
        retired_version=None,
        startup=False,
    )
    assert loaded == Announcement(CHALLENGER, "loaded", "canary v2 serving 10% of the entities: try", 2, 0.2)
    withdrawn = canary_rolled_back(promotion(2, "canary_rollback", reason="champion_better"))
    assert (withdrawn.slot, withdrawn.status, withdrawn.version) == (CHALLENGER, "rolled_back", 2)
    assert "canary v2" in withdrawn.reason and "champion_better" in withdrawn.reason


def test_the_startup_plan_keeps_a_canary_until_its_rollback() -> None:
    champion = promotion(1)
    canary = promotion(2, "canary", traffic_fraction=0.2)
    plan = plan_from_history([champion, canary])["m"]
    assert plan.challenger_beside(plan.champions[0]) is canary
    plan = plan_from_history([champion, canary, promotion(2, "canary_rollback")])["m"]
    assert plan.challenger_beside(plan.champions[0]) is None
    # A rollback of another version leaves the challenger (live, the slot does not hold it).
    plan = plan_from_history([champion, canary, promotion(3, "canary_rollback")])["m"]
    assert plan.challenger_beside(plan.champions[0]) is canary
    # After a rollback, a later challenger fills the slot again; a champion supersedes a canary.
    shadow = promotion(3, "shadow")
    plan = plan_from_history([champion, canary, promotion(2, "canary_rollback"), shadow])["m"]
    assert plan.challenger_beside(plan.champions[0]) is shadow
    plan = plan_from_history([champion, canary, promotion(4)])["m"]
    assert plan.challenger_beside(plan.champions[0]) is None
    # A canary refused live (no valid fraction) does not replace the challenger at start-up either.
    plan = plan_from_history([champion, canary, promotion(5, "canary", traffic_fraction=2.0)])["m"]
    assert plan.challenger_beside(plan.champions[0]) is canary


def test_with_shadow_off_the_startup_plan_ignores_shadow_promotions_but_not_canaries() -> None:
    champion, canary, shadow = promotion(1), promotion(2, "canary", traffic_fraction=0.2), promotion(3, "shadow")
    plan = plan_from_history([champion, canary, shadow], shadow=False)["m"]
    assert plan.challenger_beside(plan.champions[0]) is canary  # as live: the shadow promotion is ignored
    plan = plan_from_history([champion, canary, shadow])["m"]
    assert plan.challenger_beside(plan.champions[0]) is shadow
