"""Automatic triggers over the fake store: drift episodes and the first model ask for runs."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from driftline.catalog import LABELS, TRAINING_REQUESTED
from driftline.events import envelope
from driftline.project import Project
from driftline.records import LabelRecorded
from driftline_training.requests import drift_request_id, is_refresh
from driftline_training.trigger_policy import MAX_TRIGGER_ATTEMPTS, drift_trigger_id
from tests.unit.training.fakes import PROJECT, FakeStore, drift_record, event, handlers, published
from tests.unit.training.test_pipeline import examples

ONSET = datetime(2025, 1, 1, tzinfo=UTC)  # where the examples of test_pipeline start
MODEL = PROJECT.model.name
MIN = PROJECT.training.min_examples


def with_cooldown(cooldown: str) -> Project:
    return PROJECT.model_copy(update={"training": PROJECT.training.model_copy(update={"cooldown": cooldown})})


def vectors(n: int, per_second: float, labelled_every: int = 1) -> list[tuple[datetime, bool]]:
    """``n`` stored feature vectors after ONSET at ``per_second``; the k-th is labelled when
    ``labelled_every`` divides k (the k-th lies at :func:`at` (k))."""
    return [(at(k, per_second), k % labelled_every == 0) for k in range(1, n + 1)]


def at(k: int, per_second: float) -> datetime:
    return ONSET + timedelta(seconds=k / per_second)


# -- a drift that comes before its labels waits for them ----------------------------------------


@pytest.mark.parametrize(("labelled", "waits"), [(MIN - 1, True), (MIN, False)])
async def test_a_drift_requests_a_run_only_once_enough_examples_since_its_onset_are_labelled(
    labelled: int, waits: bool
) -> None:
    store = FakeStore(labelled=labelled)
    h = handlers(store)
    await h.on_drift(drift_record(ONSET))
    assert store.counted_since == [ONSET]  # since_drift: the examples after the onset
    (trigger,) = store.triggers.values()
    assert trigger.waiting is waits and trigger.since == ONSET
    assert (trigger.decision, trigger.attempts) == ("requested", 0 if waits else 1)
    requests = store.staged_on(TRAINING_REQUESTED)
    assert published(h) == ([] if waits else [[requests[0].event_id]])
    assert len(requests) == (0 if waits else 1)


async def test_a_waiting_drift_requests_its_run_in_its_chain_once_its_labels_arrive() -> None:
    store = FakeStore(labelled=MIN - 1)
    h = handlers(store)
    drift = drift_record(ONSET)
    await h.on_drift(drift)
    store.labelled = MIN
    label = LabelRecorded(**envelope("test"), labelled_event_id="raw-1", entity_id="c1", label="approve")
    await h.on_examples([event(LABELS, label)])
    await h.on_examples([event(LABELS, label)])  # asked once only
    (request,) = store.staged_on(TRAINING_REQUESTED)
    assert (request.correlation_id, request.causation_id) == (drift.correlation_id, drift.event_id)
    assert request.request_id == drift_request_id(MODEL, "episode-1", 1) and request.since is not None
    (trigger,) = store.triggers.values()
    assert (trigger.waiting, trigger.attempts, trigger.request_id) == (False, 1, request.request_id)
    assert published(h) == [[request.event_id]]


async def test_a_redelivered_drift_finds_its_decision_and_requests_nothing_new() -> None:
    store = FakeStore(labelled=MIN)
    h = handlers(store)
    drift = drift_record(ONSET)
    await h.on_drift(drift)
    await h.on_drift(drift)
    (request,) = store.staged_on(TRAINING_REQUESTED)
    assert request.request_id == drift_request_id(MODEL, "episode-1")
    # The second delivery only makes sure the request went out (a no-op when it did).
    assert published(h) == [[request.event_id], [request.event_id]]


async def test_drifts_within_the_cooldown_cause_one_request_and_another_models_none() -> None:
    store = FakeStore(labelled=MIN)
    h = handlers(store, project=with_cooldown("60s"))
    first = drift_record(ONSET, at=ONSET)
    second = drift_record(ONSET, episode_id="episode-2", at=ONSET + timedelta(seconds=30))
    later = drift_record(ONSET, episode_id="episode-3", at=ONSET + timedelta(seconds=60))
    other = drift_record(ONSET, episode_id="episode-x", model_name="someone-elses-model", at=ONSET)
    for drift in (first, second, later, other):
        await h.on_drift(drift)
    decisions = {t.episode_id: t.decision for t in store.triggers.values()}
    assert decisions == {
        "episode-1": "requested",
        "episode-2": "cooldown",
        "episode-3": "requested",
        "episode-x": "ignored",
    }
    assert [r.drift_episode_id for r in store.staged_on(TRAINING_REQUESTED)] == ["episode-1", "episode-3"]
    assert store.counted_since == [ONSET, ONSET, ONSET]  # another model's drift counts nothing


async def test_the_first_model_is_requested_once_enough_labelled_examples_exist() -> None:
    project = PROJECT.model_copy(
        update={"training": PROJECT.training.model_copy(update={"initial_training_after": 100})}
    )
    store = FakeStore(labelled=99)
    h = handlers(store, project=project)
    await h.triggers.request_initial()
    assert store.triggers == {}
    store.labelled = 100
    await h.triggers.request_initial()
    await h.triggers.request_initial()
    (trigger,) = store.triggers.values()
    assert (trigger.kind, trigger.decision) == ("initial", "requested")
    (record,) = store.staged_on(TRAINING_REQUESTED)
    assert (record.reason, record.since, record.drift_episode_id) == ("initial", None, None)
    assert record.correlation_id == record.event_id  # a new chain
    assert published(h) == [[record.event_id]]


# -- a cooldown in the units of the data -------------------------------------------------------------


@pytest.mark.parametrize("per_second", [3, 3000])
@pytest.mark.parametrize(("cooldown", "labelled_every"), [("2000 events", 1), ("500 labels", 4)])
async def test_a_count_cooldown_decides_the_same_at_any_event_rate(
    per_second: float, cooldown: str, labelled_every: int
) -> None:
    # Every 4th vector labelled: 1,999 vectors hold 499 labelled examples, 2,000 hold 500.
    store = FakeStore(labelled=MIN, vectors=vectors(5000, per_second, labelled_every))
    h = handlers(store, project=with_cooldown(cooldown))
    await h.on_drift(drift_record(ONSET, episode_id="first", at=ONSET))
    await h.on_drift(drift_record(ONSET, episode_id="held", at=at(1999, per_second)))
    await h.on_drift(drift_record(ONSET, episode_id="next", at=at(2000, per_second)))
    decisions = {t.episode_id: t.decision for t in store.triggers.values()}
    assert decisions == {"first": "requested", "held": "cooldown", "next": "requested"}
    assert [r.drift_episode_id for r in store.staged_on(TRAINING_REQUESTED)] == ["first", "next"]
    held = next(t for t in store.triggers.values() if t.episode_id == "held")
    assert f"(cooldown {cooldown})" in held.reason


@pytest.mark.parametrize(("per_second", "decision"), [(3, "requested"), (3000, "cooldown")])
async def test_a_duration_cooldown_depends_on_the_event_rate(per_second: float, decision: str) -> None:
    store = FakeStore(labelled=MIN, vectors=vectors(5000, per_second))
    h = handlers(store, project=with_cooldown("60s"))
    await h.on_drift(drift_record(ONSET, episode_id="first", at=ONSET))
    await h.on_drift(drift_record(ONSET, episode_id="second", at=at(1999, per_second)))  # 666 s or 0.67 s later
    assert {t.episode_id: t.decision for t in store.triggers.values()} == {"first": "requested", "second": decision}


@pytest.mark.parametrize("another_live_run", [False, True])
async def test_after_a_failed_run_a_count_cooldown_revives_the_drift_it_held_unless_another_run_holds_it(
    another_live_run: bool,
) -> None:
    store = FakeStore(examples=examples(400, label="deny"), labelled=MIN, vectors=vectors(5000, 1))
    h = handlers(store, project=with_cooldown("2000 events"))
    await h.on_drift(drift_record(ONSET, episode_id="failing", at=ONSET))
    if another_live_run:  # 3,000 events after the failing one: requested, its run still pending
        await h.on_drift(drift_record(ONSET, episode_id="live", at=at(3000, 1)))
    await h.on_drift(drift_record(ONSET, episode_id="held", at=at(1500, 1)))  # 1,500 events from either
    assert store.triggers[drift_trigger_id(MODEL, "held")].decision == "cooldown"
    (failing,) = [r for r in store.staged_on(TRAINING_REQUESTED) if r.drift_episode_id == "failing"]

    await h.on_request(failing)  # one class only: fails for good
    ((_, status, _, _),) = store.finished
    assert status == "failed"
    held = store.triggers[drift_trigger_id(MODEL, "held")]
    if another_live_run:
        assert held.decision == "cooldown"  # the live run lies 1,500 events from it
        assert [r.drift_episode_id for r in store.staged_on(TRAINING_REQUESTED)] == ["failing", "live"]
    else:
        assert held.decision == "requested" and "failed" in held.reason
        assert store.staged_on(TRAINING_REQUESTED)[-1].request_id == held.request_id == drift_request_id(MODEL, "held")


# -- a failed drift run ---------------------------------------------------------------------------


@pytest.mark.parametrize("cooldown", ["60s", "2000 events", "500 labels"])
async def test_a_drift_run_that_failed_for_good_lets_a_suppressed_drift_be_requested(cooldown: str) -> None:
    store = FakeStore(examples=examples(400, label="deny"), labelled=MIN)  # no vectors between the drifts
    h = handlers(store, project=with_cooldown(cooldown))
    failing = drift_record(ONSET, episode_id="episode-1", at=ONSET)
    suppressed = drift_record(ONSET, episode_id="episode-2", at=ONSET + timedelta(seconds=30))
    await h.on_drift(failing)
    await h.on_drift(suppressed)
    assert store.triggers[drift_trigger_id(MODEL, "episode-2")].decision == "cooldown"
    (first_request,) = store.staged_on(TRAINING_REQUESTED)

    await h.on_request(first_request)  # one class only: fails for good
    ((_, status, _, failed),) = store.finished
    assert status == "failed" and failed.error_type == "single_class"
    revived = store.triggers[drift_trigger_id(MODEL, "episode-2")]
    assert revived.decision == "requested" and "failed" in revived.reason
    _, request = store.staged_on(TRAINING_REQUESTED)
    assert request.request_id == revived.request_id == drift_request_id(MODEL, "episode-2")
    assert (request.correlation_id, request.causation_id) == (suppressed.correlation_id, suppressed.event_id)
    assert published(h)[-1] == [request.event_id]


@pytest.mark.parametrize(("attempts", "waits"), [(1, True), (MAX_TRIGGER_ATTEMPTS, False)])
async def test_a_drift_run_that_lacked_labelled_examples_waits_for_them_again(attempts: int, waits: bool) -> None:
    store = FakeStore(examples=examples(100), labelled=MIN)
    h = handlers(store)
    await h.on_drift(drift_record(ONSET, episode_id="episode-1"))
    trigger_id = drift_trigger_id(MODEL, "episode-1")
    store.triggers[trigger_id] = replace(store.triggers[trigger_id], attempts=attempts)
    (request,) = store.staged_on(TRAINING_REQUESTED)
    await h.on_request(request)
    ((_, status, _, failed),) = store.finished
    assert status == "failed" and failed.error_type == "too_few_examples"
    assert store.triggers[trigger_id].waiting is waits


async def test_a_refresh_attempt_requests_a_run_on_the_whole_recent_selection_without_an_onset() -> None:
    """monitoring's refresh (a slow change's next run, drift.refresh_fraction) carries no onset; the
    request has none either (requests.is_refresh), whatever window the record names; a consolidation
    keeps its onset."""
    store = FakeStore(labelled=MIN)
    h = handlers(store)
    await h.on_drift(replace(drift_record(None), attempt=3, reason="refresh"))
    await h.on_drift(replace(drift_record(ONSET), attempt=4, reason="consolidation"))
    assert store.counted_since == [None, ONSET]
    refresh, consolidation = store.staged_on(TRAINING_REQUESTED)
    assert refresh.since is None and is_refresh(refresh)
    assert consolidation.since is not None and not is_refresh(consolidation)
