"""A drift run's window choice: since the onset after a concept change, all recent data when the
older labels are still right."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest

from driftline.project import TrainingPolicy
from driftline_training.pipeline import Example, TrainingFailure
from driftline_training.window import RECENT, SINCE_ONSET, fit_choosing_window
from tests.unit.training.test_pipeline import PROJECT, START

POLICY = TrainingPolicy(min_examples=100, max_examples=5000, holdout_fraction=0.25, seed=3)


def stream(n: int, onset: int, *, flip: bool, seed: int = 0) -> list[Example]:
    """Two noisy concepts, switched at ``onset`` when ``flip`` (else one concept throughout)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        features = {name: float(rng.uniform(0, 10)) for name in PROJECT.features.names}
        features["elevel"] = float(rng.integers(0, 5))
        approve = features["salary"] + features["loan"] > 10
        if flip and i >= onset:
            approve = features["salary"] < features["loan"]
        if rng.random() < 0.05:
            approve = not approve
        out.append(Example(f"ev-{i:05d}", START + timedelta(seconds=i), features, "approve" if approve else "deny"))
    return out


def test_after_a_concept_change_the_run_trains_on_the_data_since_the_onset() -> None:
    data = stream(2300, 2000, flip=True)
    result, choice = fit_choosing_window(PROJECT, data, START + timedelta(seconds=2000), POLICY)
    assert choice is not None and choice.chosen == SINCE_ONSET
    assert choice.accuracy[SINCE_ONSET] > choice.accuracy[RECENT] + 0.1
    assert (choice.since_onset, choice.recent, choice.holdout) == (300, 2300, 75)
    assert len(result.train) + len(result.holdout) == 300 and len(result.holdout) == 75
    assert all(e.event_time >= START + timedelta(seconds=2000) for e in result.train)


def test_when_older_labels_still_hold_the_run_trains_on_all_recent_data() -> None:
    data = stream(2300, 2000, flip=False)
    result, choice = fit_choosing_window(PROJECT, data, START + timedelta(seconds=2000), POLICY)
    assert choice is not None and choice.chosen == RECENT
    assert len(result.train) + len(result.holdout) == 2300
    # The held-out slice it was chosen on is the newest part of the data since the onset.
    assert result.holdout[-1].example_id == "ev-02299"


def test_without_an_onset_or_older_data_there_is_no_choice() -> None:
    data = stream(400, 0, flip=False)
    for since in (None, START):
        result, choice = fit_choosing_window(PROJECT, data, since, POLICY)
        assert choice is None and len(result.train) + len(result.holdout) == 400


def test_one_class_since_the_onset_fails_the_run_even_when_older_data_has_two() -> None:
    data = stream(2300, 2000, flip=False)
    data = data[:2000] + [Example(e.example_id, e.event_time, e.features, "deny") for e in data[2000:]]
    with pytest.raises(TrainingFailure) as failure:
        fit_choosing_window(PROJECT, data, START + timedelta(seconds=2000), POLICY)
    assert failure.value.error_type == "single_class" and "since the drift onset" in failure.value.reason
