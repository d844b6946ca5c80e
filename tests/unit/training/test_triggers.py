"""Automatic triggers over the fake store: drift episodes and the first model ask for runs."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from driftline.catalog import LABELS, TRAINING_REQUESTED
from driftline.events import envelope
from driftline.records import LabelRecorded
from driftline_training.requests import drift_request_id
from driftline_training.trigger_policy import MAX_TRIGGER_ATTEMPTS, drift_trigger_id
from tests.unit.training.fakes import PROJECT, FakeStore, drift_record, event, handlers, published
from tests.unit.training.test_pipeline import examples

ONSET = datetime(2025, 1, 1, tzinfo=UTC)  # where the examples of test_pipeline start
MODEL = PROJECT.model.name
MIN = PROJECT.training.min_examples


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
    h = handlers(store)
    first = drift_record(ONSET, at=ONSET)
    second = drift_record(ONSET, episode_id="episode-2", at=ONSET + timedelta(seconds=30))
    later = drift_record(ONSET, episode_id="episode-3", at=ONSET + timedelta(seconds=PROJECT.training.cooldown_s))
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


# -- a failed drift run ---------------------------------------------------------------------------


async def test_a_drift_run_that_failed_for_good_lets_a_suppressed_drift_be_requested() -> None:
    store = FakeStore(examples=examples(400, label="deny"), labelled=MIN)
    h = handlers(store)
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
