"""Training runs with fakes for their store: failures become events, never a stuck consumer."""

from __future__ import annotations

import time

import pytest

from driftline.artifacts import ArtifactStore, sha256_hex
from driftline.catalog import MODELS_TRAINED, TRAINING_FAILED
from driftline.events import derived_event_id
from driftline.records import TrainingFailed
from driftline_training.pipeline import TrainingFailure
from driftline_training.runs import retry_delay
from tests.unit.training.fakes import (
    FakeStore,
    FlakyArtifacts,
    RecordingArtifacts,
    SlowStore,
    handlers,
    published,
    request,
)
from tests.unit.training.test_pipeline import examples


async def test_an_unreachable_object_store_fails_the_run_after_its_retries() -> None:
    store = FakeStore(examples=examples(400))
    unreachable = ArtifactStore("127.0.0.1:9", "user", "password", "bucket")
    h = handlers(store, unreachable, timeout_s=0.5, run_attempts=2)
    req = request()
    await h.on_request(req)
    ((run_id, status, topic, record),) = store.finished
    assert (status, topic) == ("failed", TRAINING_FAILED) and isinstance(record, TrainingFailed)
    assert record.error_type == "object_store_unavailable" and record.retryable is True
    assert "after 2 attempts" in record.reason and store.runs[run_id]["attempts"] == 2
    assert record.run_id == run_id == derived_event_id("run", "req-1")
    assert record.correlation_id == req.correlation_id and record.causation_id == req.event_id
    assert published(h) == [[record.event_id]]


async def test_a_redelivered_request_of_a_finished_run_only_republishes_its_result() -> None:
    run_id = derived_event_id("run", "req-1")
    store = FakeStore(runs={run_id: {"status": "succeeded", "result_event_id": "ev-result"}})
    h = handlers(store)
    await h.on_request(request())
    assert store.selected == 0 and store.finished == []
    assert published(h) == [["ev-result"]]


async def test_an_unexpected_error_in_a_run_becomes_training_failed() -> None:
    store = FakeStore(select_error=RuntimeError("boom"))
    await handlers(store).on_request(request())
    ((_, status, _, record),) = store.finished
    assert isinstance(record, TrainingFailed)
    assert status == "failed" and record.error_type == "internal_error" and "boom" in record.reason


async def test_an_outage_during_a_run_is_left_to_the_consumer_to_retry() -> None:
    store = FakeStore(select_error=ConnectionError("database down"))
    with pytest.raises(ConnectionError):
        await handlers(store).on_request(request())
    assert store.finished == []
    assert store.runs[derived_event_id("run", "req-1")]["status"] == "running"


async def test_invalid_parameters_in_a_request_fail_the_run() -> None:
    store = FakeStore(examples=examples(400))
    await handlers(store).on_request(request(holdout_fraction="2"))
    ((_, status, _, record),) = store.finished
    assert isinstance(record, TrainingFailed)
    assert status == "failed" and record.error_type == "invalid_parameters"


async def test_a_run_left_running_by_a_crash_is_run_again() -> None:
    run_id = derived_event_id("run", "req-1")
    store = FakeStore(examples=examples(400), runs={run_id: {"status": "running"}})
    artifacts = RecordingArtifacts()
    await handlers(store, artifacts).on_request(request(selection="recent"))
    ((_, status, topic, record),) = store.finished
    assert (status, topic) == ("succeeded", MODELS_TRAINED)
    assert record.event_id == derived_event_id("model-trained", run_id)
    assert set(artifacts.objects) == {record.artifact_key, record.metadata_key, record.training_set_key}
    assert (
        record.training_set_sha256
        == record.dataset_fingerprint
        == sha256_hex(artifacts.objects[record.training_set_key])
    )


# -- attempts, retries and the run's time limit ------------------------------------------------


async def test_an_object_store_outage_is_retried_with_a_new_attempt_and_the_run_succeeds() -> None:
    store = FakeStore(examples=examples(400))
    artifacts = FlakyArtifacts(failures=1)
    await handlers(store, artifacts, run_attempts=3).on_request(request(selection="recent"))
    ((run_id, status, topic, record),) = store.finished
    assert (status, topic) == ("succeeded", MODELS_TRAINED)
    assert store.runs[run_id]["attempts"] == 2
    assert set(artifacts.objects) == {record.artifact_key, record.metadata_key, record.training_set_key}
    assert (
        record.training_set_sha256
        == record.dataset_fingerprint
        == sha256_hex(artifacts.objects[record.training_set_key])
    )


async def test_a_failure_that_needs_new_data_is_not_retried_in_place() -> None:
    store = FakeStore(examples=examples(100))
    await handlers(store, run_attempts=3).on_request(request(selection="recent"))
    ((run_id, status, _, record),) = store.finished
    assert isinstance(record, TrainingFailed)
    assert status == "failed" and record.error_type == "too_few_examples"
    assert store.runs[run_id]["attempts"] == 1


def test_only_an_outage_is_retried_in_place_within_the_attempts_and_the_time_left() -> None:
    outage = TrainingFailure("object_store_unavailable", "down", retryable=True)
    options = {"run_attempts": 3, "backoff_s": 10.0, "time_left": 100.0}
    assert [retry_delay(outage, tries, **options) for tries in (1, 2, 3)] == [10.0, 20.0, None]
    assert retry_delay(outage, 2, run_attempts=3, backoff_s=10.0, time_left=15.0) is None
    no_data = TrainingFailure("too_few_examples", "later", retryable=True)
    assert retry_delay(no_data, 1, **options) is None


async def test_a_run_longer_than_max_run_seconds_fails_with_run_timeout() -> None:
    store = SlowStore(examples=examples(400))
    started = time.perf_counter()
    await handlers(store, RecordingArtifacts(), max_run_seconds=0.3).on_request(request())
    assert time.perf_counter() - started < 3
    ((_, status, topic, record),) = store.finished
    assert isinstance(record, TrainingFailed)
    assert (status, topic, record.error_type) == ("failed", TRAINING_FAILED, "run_timeout")
    assert "max_run_seconds" in record.reason


async def test_two_attempts_of_one_run_never_overwrite_each_others_artifact() -> None:
    # Attempt 1 is still running when a redelivery starts attempt 2 on more examples; both
    # upload. Each announced digest must still match the object under its key.
    store = FakeStore(examples=examples(400))
    artifacts = RecordingArtifacts()
    runs = handlers(store, artifacts).runs
    req = request(selection="recent")
    run_id = derived_event_id("run", "req-1")
    first = await runs.run(req, run_id, attempt=1)
    store.examples = examples(500)
    second = await runs.run(req, run_id, attempt=2)
    assert first.record.artifact_sha256 != second.record.artifact_sha256
    for outcome in (first, second):
        r = outcome.record
        assert sha256_hex(artifacts.objects[r.artifact_key]) == r.artifact_sha256
        assert sha256_hex(artifacts.objects[r.metadata_key]) == r.metadata_sha256
        assert r.training_set_key is not None and r.training_set_sha256 is not None
        assert sha256_hex(artifacts.objects[r.training_set_key]) == r.training_set_sha256
        assert r.artifact_sha256 in r.artifact_key and r.training_set_sha256 in r.training_set_key
    assert len(artifacts.objects) == 6
