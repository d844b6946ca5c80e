"""The example workload: seeded, valid against its own schema, and drifting exactly as scheduled."""

from __future__ import annotations

from datetime import UTC, datetime
from statistics import mean

import pytest

from driftline.project import load_project
from driftline.validation import Valid, Validator
from driftline_cli.examples.loan_approval.generator import APPROVE, FUNCTIONS, LoanStream

START = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


def stream(seed: int = 7, function: int = 2) -> LoanStream:
    return LoanStream(seed=seed, function=function, start=START)


def test_the_same_seed_gives_the_same_stream_and_another_seed_another() -> None:
    a = [it.event for it in stream(seed=3).take(200)]
    b = [it.event for it in stream(seed=3).take(200)]
    c = [it.event for it in stream(seed=4).take(200)]
    assert a == b
    assert a != c
    assert len({e["event_id"] for e in a}) == 200


def test_every_event_and_label_passes_the_ingestion_validation() -> None:
    validator = Validator.from_project(load_project())
    for i, it in enumerate(stream().take(300)):
        assert isinstance(validator.event(it.event, i, producer="test", source="test"), Valid)
        assert isinstance(validator.label(it.label_record(), i, producer="test", source="test"), Valid)


def test_labels_follow_the_scheduled_function_before_and_after_a_sudden_drift() -> None:
    s = stream(function=2).schedule_concept_drift(at=500, function=7)
    items = list(s.take(1000))
    assert {it.function for it in items[:500]} == {2} and {it.function for it in items[500:]} == {7}
    for it in items:
        assert (it.label == APPROVE) == FUNCTIONS[it.function](it.event["payload"])
    # The switch really changes the concept: the old function is wrong on a large share after it.
    disagree = mean(FUNCTIONS[2](it.event["payload"]) != FUNCTIONS[7](it.event["payload"]) for it in items[500:])
    assert disagree > 0.3


def test_a_gradual_drift_moves_the_share_of_the_new_concept_across_its_width() -> None:
    items = list(stream(function=2).schedule_concept_drift(at=1000, function=7, width=2000).take(4000))
    share = [mean(it.function == 7 for it in items[lo : lo + 500]) for lo in range(1000, 3000, 500)]
    assert items[999].function == 2 and all(it.function == 7 for it in items[3000:])
    assert share == sorted(share) and share[0] < 0.3 < 0.7 < share[-1]


def test_a_covariate_shift_scales_its_field_from_its_position_on() -> None:
    items = list(stream().schedule_covariate_shift(at=2000, field="salary", scale=1.5).take(4000))
    before = mean(it.event["payload"]["salary"] for it in items[:2000])
    after = mean(it.event["payload"]["salary"] for it in items[2000:])
    assert after / before == pytest.approx(1.5, rel=0.05)
    shifted_ints = list(stream().schedule_covariate_shift(at=0, field="age", offset=10).take(50))
    assert all(isinstance(it.event["payload"]["age"], int) and it.event["payload"]["age"] >= 30 for it in shifted_ints)


def test_event_times_advance_by_the_configured_step() -> None:
    first, second = stream().take(2)
    assert datetime.fromisoformat(first.event["event_time"]) == START
    assert (datetime.fromisoformat(second.event["event_time"]) - START).total_seconds() == 1.0


def test_unknown_functions_are_refused() -> None:
    with pytest.raises(ValueError, match=r"1\.\.10"):
        LoanStream(function=11)
    with pytest.raises(ValueError, match=r"1\.\.10"):
        stream().schedule_concept_drift(at=10, function=0)
