"""The trigger policy as pure functions of state: de-duplicate, ignore, cooldown, defer, revive, wait again."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from driftline.project import CooldownSpec
from driftline_training import trigger_policy as policy
from driftline_training.trigger_policy import (
    MAX_TRIGGER_ATTEMPTS,
    Ask,
    Trigger,
    TriggerDecision,
    TriggerState,
    cooldown_decision,
)

T = datetime(2025, 1, 1, tzinfo=UTC)
ASK = Ask(trigger_id="drift:m:e1", kind="drift", model_name="m", event_time=T, episode_id="e1", since=T)
NOTHING = TriggerState(earlier=None, nearest_live_request=None)
SIXTY = CooldownSpec(60, "s")


def trigger(decision: str = "requested", **fields: object) -> Trigger:
    values: dict[str, object] = {
        "trigger_id": "drift:m:e0",
        "kind": "drift",
        "model_name": "m",
        "event_time": T,
        "episode_id": "e0",
        "decision": decision,
        "reason": "r",
        "request_id": "req-0",
        "attempts": 1,
        "waiting": False,
        **fields,
    }
    return Trigger(**values)


def test_cooldown_requests_once_within_the_window() -> None:
    t = datetime(2025, 1, 1, tzinfo=UTC)
    assert cooldown_decision(None, t, SIXTY)[0] == "requested"
    assert cooldown_decision(t, t + timedelta(seconds=30), SIXTY)[0] == "cooldown"
    assert cooldown_decision(t + timedelta(seconds=30), t, SIXTY)[0] == "cooldown"  # out of order, same window
    assert cooldown_decision(t, t + timedelta(seconds=61), SIXTY)[0] == "requested"


def test_a_trigger_decided_before_keeps_its_decision() -> None:
    earlier = trigger("cooldown", trigger_id=ASK.trigger_id, request_id=None)
    decision = policy.decide(ASK, TriggerState(earlier, nearest_live_request=None), cooldown=SIXTY)
    assert decision == TriggerDecision(ASK.trigger_id, "cooldown", "r", new=False)
    assert not decision.requests_now
    requested = trigger(trigger_id=ASK.trigger_id, request_id="req-1")
    again = policy.decide(ASK, TriggerState(requested, None), cooldown=SIXTY, labelled=0, min_examples=300)
    assert (again.decision, again.new, again.request_id, again.requests_now) == ("requested", False, "req-1", False)


def test_another_models_drift_is_ignored() -> None:
    reason = policy.ignore_reason("theirs", "ours")
    assert reason is not None and "theirs" in reason and policy.ignore_reason("ours", "ours") is None
    decision = policy.decide(ASK, NOTHING, cooldown=SIXTY, ignore=reason)
    assert (decision.decision, decision.reason, decision.requests_now) == ("ignored", reason, False)


def test_a_drift_within_the_cooldown_of_a_live_request_is_not_requested() -> None:
    near = TriggerState(earlier=None, nearest_live_request=T - timedelta(seconds=30))
    assert policy.decide(ASK, near, cooldown=SIXTY).decision == "cooldown"
    far = TriggerState(earlier=None, nearest_live_request=T - timedelta(seconds=90))
    decision = policy.decide(ASK, far, cooldown=SIXTY)
    assert decision.decision == "requested" and decision.requests_now


def test_a_drift_without_enough_labelled_examples_is_requested_but_waits() -> None:
    waiting = policy.decide(ASK, NOTHING, cooldown=SIXTY, labelled=299, min_examples=300)
    assert (waiting.decision, waiting.waiting, waiting.requests_now) == ("requested", True, False)
    assert "waiting for labelled examples" in waiting.reason
    ready = policy.decide(ASK, NOTHING, cooldown=SIXTY, labelled=300, min_examples=300)
    assert (ready.waiting, ready.requests_now) == (False, True)
    # Within the cooldown it is a cooldown, whatever the labels.
    near = TriggerState(earlier=None, nearest_live_request=T)
    assert policy.decide(ASK, near, cooldown=SIXTY, labelled=0, min_examples=300).decision == "cooldown"


def test_a_new_decision_is_stored_with_its_request_and_attempts() -> None:
    waiting = policy.decided(ASK, policy.decide(ASK, NOTHING, cooldown=SIXTY, labelled=0, min_examples=1))
    assert (waiting.waiting, waiting.attempts, waiting.request_id, waiting.since) == (True, 0, None, T)
    requested = replace(policy.decide(ASK, NOTHING, cooldown=SIXTY), request_id="req-1")
    row = policy.decided(ASK, requested)
    assert (row.decision, row.waiting, row.attempts, row.request_id) == ("requested", False, 1, "req-1")


def test_a_failed_run_frees_the_cooldown_for_the_latest_drift_it_suppressed() -> None:
    failed = trigger(trigger_id="drift:m:e1")
    assert policy.frees_its_cooldown(failed)
    assert not policy.frees_its_cooldown(replace(failed, waiting=True))  # it still stands for its episode
    suppressed = trigger("cooldown", trigger_id="drift:m:e2", event_time=T + timedelta(seconds=30))
    reason = policy.revival("drift:m:e1", suppressed, None, SIXTY)
    assert reason is not None and "drift:m:e1 failed" in reason
    assert policy.revival("drift:m:e1", None, None, SIXTY) is None
    # Another live run within its cooldown keeps it suppressed.
    assert policy.revival("drift:m:e1", suppressed, T + timedelta(seconds=40), SIXTY) is None


def test_a_run_that_lacked_labelled_examples_waits_again_a_bounded_number_of_times() -> None:
    assert policy.waits_again("too_few_examples", trigger(attempts=1))
    assert not policy.waits_again("too_few_examples", trigger(attempts=MAX_TRIGGER_ATTEMPTS))
    assert not policy.waits_again("single_class", trigger(attempts=1))
    assert not policy.waits_again("too_few_examples", None)  # a request that no trigger made


def test_enough_labelled_examples_and_the_first_model() -> None:
    assert policy.enough_labelled(300, 300) and not policy.enough_labelled(299, 300)
    assert policy.initial_due(100, 100) and not policy.initial_due(100, 99)
    assert not policy.initial_due(0, 1000)  # no initial training configured
