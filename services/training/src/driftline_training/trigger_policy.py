"""When an automatic trigger (a drift episode, the first model) asks for a run: pure decisions.

Every function here is a function of the state the store loaded (under the model's trigger lock,
see :mod:`driftline_training.triggers`), so the policy is tested without a database:

* de-duplicate: a trigger decided before keeps its decision (a re-delivered drift event requests
  nothing new); each attempt of an episode (``DriftDetected.attempt``: monitoring asks again while
  served performance stays degraded, and once to consolidate) is a trigger of its own;
* ignore: a drift of another project's model;
* cooldown: no second drift-triggered run within the cooldown of another requested one whose
  run has not failed (a failed run does not use up the cooldown). The cooldown is a duration of
  the drift events' event time, or a count of the data between the two drift events (feature
  vectors, ``events``, or labelled examples, ``labels``): the store counts that gap under the lock
  and the decision compares it, so one policy behaves the same at any event rate. It separates
  episodes: the further attempts of one episode are spaced by monitoring's episode policy (in
  labelled outcomes), so they are not held by it;
* defer: labels lag the events; a drift with fewer than ``min_examples`` labelled examples since
  its onset is requested but waits (holding the cooldown) until they exist;
* revive: when a drift run fails for good, the most recent drift its cooldown suppressed is
  requested after all;
* wait again: a run that still lacked labelled examples puts its trigger back to waiting, at most
  ``MAX_TRIGGER_ATTEMPTS`` requests per episode.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime

from driftline.project import CooldownSpec

REQUESTED = "requested"
COOLDOWN = "cooldown"
IGNORED = "ignored"

# A drift trigger is asked again after a run that lacked examples, at most this many times in all.
MAX_TRIGGER_ATTEMPTS = 5

NO_COOLDOWN = CooldownSpec(0.0, "s")


def drift_trigger_id(model_name: str, episode_id: str, episode_attempt: int = 1) -> str:
    base = f"drift:{model_name}:{episode_id}"
    return base if episode_attempt <= 1 else f"{base}:{episode_attempt}"


def initial_trigger_id(model_name: str, feature_set_version: str) -> str:
    return f"initial:{model_name}:{feature_set_version}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Ask:
    """An automatic trigger asking for a run."""

    trigger_id: str
    kind: str  # drift | initial
    model_name: str
    event_time: datetime  # the cooldown is measured on it
    source_event_id: str | None = None  # the drift event
    episode_id: str | None = None
    correlation_id: str | None = None  # the drift event's: a later request stays in its chain
    since: datetime | None = None  # the first example a drift run trains on
    episode_attempt: int = 1  # which request of its episode (DriftDetected.attempt)


@dataclass(frozen=True, slots=True, kw_only=True)
class Trigger(Ask):
    """A decided trigger, as the store keeps it."""

    decision: str  # requested | cooldown | ignored
    reason: str
    request_id: str | None  # the latest request made for it
    attempts: int  # requests made so far
    waiting: bool  # requested, its request waits for labelled examples


@dataclass(frozen=True, slots=True)
class TriggerState:
    """What a decision needs to know, read under the model's trigger lock."""

    earlier: Trigger | None  # this trigger, when an earlier delivery decided it
    nearest_live_request: datetime | None  # event time of the nearest requested trigger whose run has not failed
    # A count cooldown: the examples in its unit (events | labels) whose event time lies between
    # this trigger's and nearest_live_request's (the nearest in that unit), counted up to the
    # cooldown (the decision needs no more). None for a duration (measured on the event times).
    gap: int | None = None


@dataclass(frozen=True, slots=True)
class TriggerDecision:
    trigger_id: str
    decision: str  # requested | cooldown | ignored
    reason: str
    waiting: bool = False  # requested, but the request waits until enough examples are labelled
    new: bool = True  # decided now (False: found from an earlier delivery)
    request_id: str | None = None  # the request made for it (by this decision or an earlier delivery's)

    @property
    def requests_now(self) -> bool:
        """A request goes out with this decision."""
        return self.new and self.decision == REQUESTED and not self.waiting


def ignore_reason(model_name: str, own_model: str) -> str | None:
    """Why a drift of ``model_name`` is none of this project's business (None: it is)."""
    if model_name == own_model:
        return None
    return f"model {model_name!r} is not this project's model ({own_model!r})"


def cooldown_decision(
    last_requested: datetime | None, event_time: datetime, cooldown: CooldownSpec, gap: int | None = None
) -> tuple[str, str]:
    """Request a run unless another automatic run of the model was requested within the cooldown.

    A duration is measured between the event times; a count (``events``, ``labels``) is ``gap``,
    the examples between them as the store counted them.
    """
    if last_requested is None:
        return REQUESTED, "no earlier run was requested for this model"
    if cooldown.is_duration:
        distance = abs((event_time - last_requested).total_seconds())
        within, shown = distance < cooldown.amount, f"{distance:.1f}s"
    else:
        if gap is None:
            raise ValueError(f"a cooldown of {cooldown} needs the {cooldown.unit} between the two drifts")
        within, shown = gap < cooldown.amount, f"{gap} {cooldown.unit}"
    if within:
        return COOLDOWN, (
            f"a run was requested for a drift at {last_requested.isoformat()}, {shown} from this one "
            f"(cooldown {cooldown})"
        )
    at_least = "" if cooldown.is_duration else "at least "
    return REQUESTED, f"last requested run was {at_least}{shown} away (cooldown {cooldown})"


def enough_labelled(labelled: int, min_examples: int) -> bool:
    return labelled >= min_examples


def decide(
    ask: Ask,
    state: TriggerState,
    *,
    cooldown: CooldownSpec,
    ignore: str | None = None,
    labelled: int | None = None,
    min_examples: int = 0,
) -> TriggerDecision:
    """Decide once per trigger: the earlier decision, ignored, cooldown, or requested (maybe waiting).

    ``labelled``: labelled examples since the drift's onset (None: not counted, nothing to wait for).
    """
    earlier = state.earlier
    if earlier is not None:
        return TriggerDecision(
            earlier.trigger_id,
            earlier.decision,
            earlier.reason,
            earlier.waiting,
            new=False,
            request_id=earlier.request_id,
        )
    if ignore is not None:
        return TriggerDecision(ask.trigger_id, IGNORED, ignore)
    if ask.episode_attempt > 1:
        decision, reason = REQUESTED, f"attempt {ask.episode_attempt} of an open episode (spaced by monitoring)"
    else:
        decision, reason = cooldown_decision(state.nearest_live_request, ask.event_time, cooldown, state.gap)
    if decision == REQUESTED and labelled is not None and not enough_labelled(labelled, min_examples):
        return TriggerDecision(ask.trigger_id, REQUESTED, f"{reason}; waiting for labelled examples", waiting=True)
    return TriggerDecision(ask.trigger_id, decision, reason)


def decided(ask: Ask, decision: TriggerDecision) -> Trigger:
    """The trigger to store for a new decision: the ask (every field of :class:`Ask`), decided."""
    return Trigger(
        **{f.name: getattr(ask, f.name) for f in fields(Ask)},
        decision=decision.decision,
        reason=decision.reason,
        request_id=decision.request_id,
        attempts=0 if decision.waiting else 1,
        waiting=decision.waiting,
    )


def frees_its_cooldown(failed: Trigger) -> bool:
    """A trigger whose run failed frees the cooldown it held, unless it waits to be asked again
    (then it still stands for its episode)."""
    return not failed.waiting


def revival(
    failed_trigger_id: str,
    suppressed: Trigger | None,
    nearest_live_request: datetime | None,
    cooldown: CooldownSpec,
    gap: int | None = None,
) -> str | None:
    """Why ``suppressed`` (the most recent drift the failed trigger's cooldown suppressed) is requested
    after all; None when there is none or another live run lies within its cooldown (``gap``: as in
    :class:`TriggerState`, between ``suppressed`` and ``nearest_live_request``)."""
    if suppressed is None:
        return None
    decision, _ = cooldown_decision(nearest_live_request, suppressed.event_time, cooldown, gap)
    if decision != REQUESTED:
        return None
    return f"the run requested for {failed_trigger_id} failed; no other run lies within the cooldown"


def waits_again(error_type: str, trigger: Trigger | None) -> bool:
    """After a failed run: wait for labelled examples and ask again, when that is what it lacked."""
    return error_type == "too_few_examples" and trigger is not None and trigger.attempts < MAX_TRIGGER_ATTEMPTS


def initial_due(initial_training_after: int, labelled: int) -> bool:
    """The policy's first model: requested once ``initial_training_after`` (> 0) examples are labelled."""
    return 0 < initial_training_after <= labelled
