"""Deployment's pure decisions: which slot a promotion fills and what is announced after it."""

from __future__ import annotations

from typing import Any

from driftline.events import envelope
from driftline.records import ModelPromoted
from driftline_deployment.policy import (
    CHALLENGER,
    CHAMPION,
    Announcement,
    load_failed,
    plan_from_history,
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
    assert slot_for("shadow") == CHALLENGER
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
