"""The training cooldown in the units of the data: parsing and the pure decisions in each unit."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from driftline.project import CooldownSpec, TrainingPolicy, load_project, parse_cooldown
from driftline_training import trigger_policy as policy
from driftline_training.trigger_policy import Ask, Trigger, TriggerState, cooldown_decision

T = datetime(2025, 1, 1, tzinfo=UTC)
ASK = Ask(trigger_id="drift:m:e1", kind="drift", model_name="m", event_time=T, episode_id="e1", since=T)
EVENTS = CooldownSpec(2000, "events")
LABELS = CooldownSpec(500, "labels")


def near(gap: int | None, at: datetime = T - timedelta(seconds=5)) -> TriggerState:
    """The nearest live request at ``at``, ``gap`` examples (in the cooldown's unit) from ASK."""
    return TriggerState(earlier=None, nearest_live_request=at, gap=gap)


# -- parsing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("60s", CooldownSpec(60, "s")),
        ("5m", CooldownSpec(300, "s")),
        ("500ms", CooldownSpec(0.5, "s")),
        ("2000 events", CooldownSpec(2000, "events")),
        ("500 labels", CooldownSpec(500, "labels")),
        ("1 label", CooldownSpec(1, "labels")),
        (" 10events ", CooldownSpec(10, "events")),
        ("0 events", CooldownSpec(0, "events")),
    ],
)
def test_a_cooldown_is_a_duration_or_a_count_of_the_data(text: str, spec: CooldownSpec) -> None:
    assert parse_cooldown(text) == spec
    assert TrainingPolicy(cooldown=text).cooldown_spec == spec


@pytest.mark.parametrize("text", ["5 parsecs", "2000", "1.5 events", "-3 labels", "events", "", "60 s labels"])
def test_a_cooldown_in_an_unknown_unit_is_refused_with_the_units_it_takes(text: str) -> None:
    with pytest.raises(ValidationError) as caught:
        TrainingPolicy(cooldown=text)
    (error,) = caught.value.errors()
    assert error["loc"] == ("cooldown",)
    assert f"bad cooldown {text!r}" in error["msg"]
    assert "60s" in error["msg"] and "2000 events" in error["msg"] and "500 labels" in error["msg"]


def test_cooldown_s_is_the_duration_and_refuses_a_count() -> None:
    assert TrainingPolicy(cooldown="5m").cooldown_s == 300
    assert TrainingPolicy().cooldown_s == 60  # the default is still 60s
    with pytest.raises(ValueError, match="'2000 events' is a count of events, not a duration"):
        _ = TrainingPolicy(cooldown="2000 events").cooldown_s


def test_the_shipped_project_counts_labels_and_specs_print_as_written() -> None:
    assert load_project().training.cooldown_spec == CooldownSpec(1000, "labels")
    assert [str(parse_cooldown(t)) for t in ("60s", "5m", "2000 events", "1 label")] == [
        "60s",
        "300s",
        "2000 events",
        "1 labels",
    ]


# -- the decision in each unit ------------------------------------------------------------------


def test_a_count_cooldown_holds_until_that_many_examples_lie_between_the_drifts() -> None:
    # 2000 events: a drift 1,999 events after a live request is suppressed, one 2,000 after is requested.
    held = cooldown_decision(T - timedelta(seconds=5), T, EVENTS, gap=1999)
    assert held[0] == "cooldown" and "1999 events from this one (cooldown 2000 events)" in held[1]
    passed = cooldown_decision(T - timedelta(seconds=5), T, EVENTS, gap=2000)
    assert passed == ("requested", "last requested run was at least 2000 events away (cooldown 2000 events)")
    # 500 labels, the same way in labelled examples.
    assert cooldown_decision(T, T, LABELS, gap=499)[0] == "cooldown"
    assert cooldown_decision(T, T, LABELS, gap=500)[0] == "requested"
    # Nothing requested before: requested, whatever the unit.
    assert cooldown_decision(None, T, EVENTS)[0] == "requested"


def test_a_count_cooldown_ignores_the_clock() -> None:
    # A day apart but few examples in between: held; a millisecond apart but many: requested.
    assert cooldown_decision(T - timedelta(days=1), T, EVENTS, gap=10)[0] == "cooldown"
    assert cooldown_decision(T - timedelta(milliseconds=1), T, EVENTS, gap=5000)[0] == "requested"
    # A duration ignores a gap in examples: it is measured on the event times.
    assert cooldown_decision(T - timedelta(seconds=30), T, CooldownSpec(60, "s"), gap=10**6)[0] == "cooldown"


def test_a_count_cooldown_without_the_counted_gap_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="needs the labels between the two drifts"):
        cooldown_decision(T, T, LABELS, gap=None)


@pytest.mark.parametrize(
    ("cooldown", "gap", "decision"),
    [
        (EVENTS, 1999, "cooldown"),
        (EVENTS, 2000, "requested"),
        (LABELS, 499, "cooldown"),
        (LABELS, 500, "requested"),
        (CooldownSpec(0, "events"), 0, "requested"),  # no cooldown
    ],
)
def test_decide_compares_the_gap_the_store_counted(cooldown: CooldownSpec, gap: int, decision: str) -> None:
    decided = policy.decide(ASK, near(gap), cooldown=cooldown)
    assert decided.decision == decision and decided.requests_now is (decision == "requested")


def test_in_a_count_unit_a_drift_still_waits_for_its_labelled_examples_and_attempts_skip_the_cooldown() -> None:
    waiting = policy.decide(ASK, near(2000), cooldown=EVENTS, labelled=299, min_examples=300)
    assert (waiting.decision, waiting.waiting) == ("requested", True)
    held = policy.decide(ASK, near(0), cooldown=LABELS, labelled=0, min_examples=300)
    assert (held.decision, held.waiting) == ("cooldown", False)
    # A further attempt of an open episode is spaced by monitoring, not by the cooldown.
    again = policy.decide(replace(ASK, episode_attempt=2), near(0), cooldown=LABELS, labelled=300, min_examples=300)
    assert (again.decision, again.requests_now) == ("requested", True)
    assert "attempt 2" in again.reason


def test_a_count_cooldown_revives_a_suppressed_drift_unless_a_live_run_lies_within_its_count() -> None:
    suppressed = Trigger(
        trigger_id="drift:m:e2",
        kind="drift",
        model_name="m",
        event_time=T + timedelta(seconds=30),
        episode_id="e2",
        decision="cooldown",
        reason="r",
        request_id=None,
        attempts=1,
        waiting=False,
    )
    reason = policy.revival("drift:m:e1", suppressed, None, LABELS)
    assert reason is not None and "drift:m:e1 failed" in reason
    live = T + timedelta(hours=1)  # an hour away, but only 499 labelled examples between
    assert policy.revival("drift:m:e1", suppressed, live, LABELS, gap=499) is None
    assert policy.revival("drift:m:e1", suppressed, live, LABELS, gap=500) is not None


def test_the_first_model_has_no_cooldown() -> None:
    assert (policy.NO_COOLDOWN.amount, policy.NO_COOLDOWN.unit) == (0, "s")
    assert policy.decide(ASK, TriggerState(None, T), cooldown=policy.NO_COOLDOWN).decision == "requested"
