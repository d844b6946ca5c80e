"""A run's training set as a Parquet file, and re-fitting a run from it (driftline runs reproduce)."""

from __future__ import annotations

import io
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pyarrow.parquet as pq
import pytest

from driftline.artifacts import sha256_hex
from driftline.project import TrainingPolicy, load_project
from driftline_ml.provenance import library_versions, version_differences
from driftline_ml.reproduce import reproduce
from driftline_ml.trainingset import TrainingSetError, read_training_set, write_training_set
from driftline_training import pipeline
from driftline_training.pipeline import Example
from tests.unit.training.test_pipeline import examples

PROJECT = load_project()
POLICY = TrainingPolicy(min_examples=100, max_examples=1000, holdout_fraction=0.25, seed=3)


def _metadata(result: pipeline.FitResult, *, run_id: str = "run-1") -> dict[str, object]:
    """The parts of a run's metadata document that reproducing it reads (as runs.py writes them)."""
    return {
        "run_id": run_id,
        "model_name": PROJECT.model.name,
        "estimator": PROJECT.model.estimator,
        "estimator_spec": {"estimator": PROJECT.model.estimator, "params": dict(PROJECT.model.params)},
        "params": result.params,
        "seed": result.seed,
        "refit": result.refit,
        "feature_names": result.feature_names,
        "metrics": result.metrics,
        "library_versions": library_versions(),
    }


def test_the_file_holds_every_example_value_label_and_split_in_the_runs_order() -> None:
    data = examples(120)
    data[3] = replace(data[3], features={**data[3].features, "note": "text", "salary": None})
    data[4] = replace(data[4], label_event_id="lab-4", label_time=data[4].event_time + timedelta(minutes=5))
    train, holdout = pipeline.split_by_time(data, 0.25)
    blob = write_training_set(train, holdout, feature_set_version="7")
    assert write_training_set(train, holdout, feature_set_version="7") == blob  # bytes depend on rows only

    table = pq.read_table(io.BytesIO(blob))  # a data scientist's reader sees plain columns
    assert table.num_rows == 120
    assert table.column("split").to_pylist() == ["train"] * len(train) + ["holdout"] * len(holdout)
    assert str(table.schema.field("feature.salary").type) == "double"
    assert str(table.schema.field("feature.note").type) == "string"

    back = read_training_set(blob)
    assert back.feature_set_version == "7"
    assert [r.example_id for r in back.train] == [e.example_id for e in train]
    assert [r.example_id for r in back.holdout] == [e.example_id for e in holdout]
    for original, read in zip(data, back.rows, strict=True):
        assert read.event_time == original.event_time and read.label == original.label
        assert read.features == {k: v for k, v in original.features.items() if v is not None}
    assert back.rows[4].label_event_id == "lab-4"
    assert back.rows[4].label_time == datetime(2025, 1, 1, 0, 5, 4, tzinfo=UTC)
    assert back.time_range() == (data[0].event_time, data[-1].event_time)


def test_a_file_that_is_not_a_training_set_is_refused() -> None:
    with pytest.raises(TrainingSetError):
        read_training_set(b"not parquet at all")


@pytest.mark.parametrize("refit", [True, False])
def test_reproducing_a_run_from_its_training_set_gives_identical_holdout_predictions(refit: bool) -> None:
    result = pipeline.fit(PROJECT, examples(300), POLICY.model_copy(update={"refit": refit}))
    metadata = _metadata(result)
    sha = sha256_hex(result.model_bytes)
    same = reproduce(metadata, read_training_set(result.training_set), result.model_bytes, model_sha256=sha)
    assert same.identical and same.predictions_identical and same.n_predictions_differ == 0
    assert same.model_bytes_identical and same.new_model_sha256 == sha
    assert same.max_probability_difference == 0.0
    assert same.new_accuracy == pytest.approx(result.metrics["accuracy"])
    assert same.refit is refit and same.library_differences == {}
    assert (same.n_train, same.n_holdout) == (len(result.train), len(result.holdout))


def test_a_different_estimator_or_library_version_is_reported() -> None:
    result = pipeline.fit(PROJECT, examples(300), POLICY)
    metadata = _metadata(result)
    recorded = dict(library_versions(), **{"scikit-learn": "0.0.1"})
    metadata["library_versions"] = recorded
    # Other parameters than the run's: the model is another, and the comparison says so.
    params = {**PROJECT.model.params, "max_iter": 3}
    metadata["estimator_spec"] = {"estimator": PROJECT.model.estimator, "params": params}
    other = reproduce(
        metadata,
        read_training_set(result.training_set),
        result.model_bytes,
        model_sha256=sha256_hex(result.model_bytes),
    )
    assert not other.model_bytes_identical
    assert not other.identical and other.max_probability_difference is not None
    assert other.max_probability_difference > 0
    assert other.library_differences["scikit-learn"] == ("0.0.1", library_versions()["scikit-learn"])


def test_version_differences_name_every_library_that_differs() -> None:
    assert version_differences({"a": "1", "b": "2"}, {"a": "1", "b": "3", "c": "4"}) == {
        "b": ("2", "3"),
        "c": ("not recorded", "4"),
    }


def test_examples_keep_their_label_record() -> None:
    e = Example("x", datetime(2025, 1, 1, tzinfo=UTC), {"a": 1.0}, "approve", label_event_id="l1")
    back = read_training_set(write_training_set([e], [e], feature_set_version="1"))
    assert back.train[0].label_event_id == "l1"
