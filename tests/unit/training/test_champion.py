"""The champion is compared on the holdout examples it did not train on."""

from __future__ import annotations

import json

from driftline_ml.models import build_estimator, dump_model, load_model
from driftline_training import pipeline
from driftline_training.champion import Champion
from driftline_training.pipeline import Example
from driftline_training.requests import is_refresh, request_record
from tests.unit.training.fakes import PROJECT, FakeStore, RecordingArtifacts, handlers, promoted, request
from tests.unit.training.test_pipeline import examples


def test_the_champion_is_what_models_promoted_names() -> None:
    champion = Champion.from_promoted(promoted())
    assert champion == Champion(
        model_name=PROJECT.model.name,
        version=2,
        run_id="run-2",
        artifact_bucket="b",
        artifact_key="k",
        artifact_sha256="s",
        feature_names=("salary",),
        metadata_key="mk",
        metadata_sha256="ms",
    )


async def _champion(artifacts: RecordingArtifacts, trained_on: list[Example], *, metadata: bool = True) -> Champion:
    model = build_estimator(PROJECT.model, seed=1)
    model.fit(pipeline.feature_matrix(trained_on, PROJECT.model_features), [e.label for e in trained_on])
    art = await artifacts.put("champion/model.skops", dump_model(model))
    base = {
        "model_name": PROJECT.model.name,
        "version": 1,
        "run_id": "run-1",
        "artifact_bucket": "bucket",
        "artifact_key": art.key,
        "artifact_sha256": art.sha256,
        "feature_names": tuple(PROJECT.model_features),
    }
    if not metadata:
        return Champion(**base)
    doc = {"selection": {"train_end": trained_on[-1].event_time.isoformat()}}
    meta = await artifacts.put_json("champion/metadata.json", doc)
    return Champion(**base, metadata_key=meta.key, metadata_sha256=meta.sha256)


async def test_the_champion_is_scored_only_on_holdout_examples_after_its_training_data() -> None:
    data = examples(400)  # the candidate trains on the oldest 300, holds out the newest 100
    artifacts = RecordingArtifacts()
    champion = await _champion(artifacts, data[:350])  # it trained on half of that holdout
    store = FakeStore(examples=data, champion=champion)
    runs = handlers(store, artifacts, min_comparison_examples=20).runs
    outcome = await runs.run(request(selection="recent"), "run-2")
    r = outcome.record
    unseen = data[350:]
    assert r.n_holdout == 100 and r.n_comparison == 50 and r.champion_version == 1
    champion_model = load_model(artifacts.objects[champion.artifact_key])
    positive = PROJECT.label.positive_class
    expected = pipeline.evaluate_on_holdout(champion_model, unseen, champion.feature_names, positive)
    assert r.champion_metrics == expected
    # The candidate is judged by the model fitted on its training split, never by the stored model
    # refitted on every example (the holdout included): that one would score its own training data.
    assert outcome.result.refit and outcome.result.judged is not outcome.result.model
    assert r.comparison_metrics == pipeline.evaluate_on_holdout(
        outcome.result.judged, unseen, outcome.result.feature_names, positive
    )
    metadata = json.loads(artifacts.objects[r.metadata_key])
    assert metadata["comparison"]["n_holdout_excluded"] == 50
    assert metadata["comparison"]["champion_train_end"] == data[349].event_time.isoformat()


async def test_too_few_unseen_holdout_examples_means_no_comparison_with_the_reason() -> None:
    data = examples(400)
    artifacts = RecordingArtifacts()
    champion = await _champion(artifacts, data[:390])
    store = FakeStore(examples=data, champion=champion)
    runs = handlers(store, artifacts, min_comparison_examples=20).runs
    r = (await runs.run(request(selection="recent"), "run-2")).record
    assert r.champion_metrics is None and r.champion_version is None and r.comparison_metrics is None
    metadata = json.loads(artifacts.objects[r.metadata_key])
    assert "only 10 of the 100 holdout examples" in metadata["champion_evaluation_error"]


async def test_a_champion_without_recorded_training_data_is_scored_on_the_whole_holdout() -> None:
    data = examples(400)
    artifacts = RecordingArtifacts()
    champion = await _champion(artifacts, data[:300], metadata=False)
    store = FakeStore(examples=data, champion=champion)
    r = (await handlers(store, artifacts).runs.run(request(selection="recent"), "run-2")).record
    assert r.n_comparison == 100 and r.comparison_metrics == r.metrics
    assert r.champion_metrics is not None


async def test_a_tampered_champion_is_refused_and_the_run_says_why() -> None:
    data = examples(400)
    artifacts = RecordingArtifacts()
    champion = await _champion(artifacts, data[:300])
    artifacts.objects[champion.artifact_key] += b"tampered"
    store = FakeStore(examples=data, champion=champion)
    r = (await handlers(store, artifacts).runs.run(request(selection="recent"), "run-2")).record
    assert r.champion_metrics is None and r.champion_version is None and r.n_comparison is None
    metadata = json.loads(artifacts.objects[r.metadata_key])
    assert "SHA-256" in metadata["champion_evaluation_error"]
    assert metadata["comparison"]["champion_version"] == 1 and metadata["comparison"]["error"]


async def test_a_refresh_is_marked_on_its_run_and_compared_on_the_most_recent_holdout_like_a_drift_run() -> None:
    """A refresh (a drift episode's request without an onset) trains on the whole recent selection;
    its models.trained says so (the registry judges it by promotion.refresh_confidence) and, like
    every drift run, it compares on the most recent compare_recent of the unseen holdout."""
    data = examples(400)
    artifacts = RecordingArtifacts()
    champion = await _champion(artifacts, data[:300])  # the whole 100-example holdout is unseen
    store = FakeStore(examples=data, champion=champion)
    runs = handlers(store, artifacts, min_comparison_examples=20).runs
    refresh = request_record(
        request_id="req-r", model_name=PROJECT.model.name, reason="drift", requested_by="drift-policy",
        drift_episode_id="episode-1", since=None, producer="test",
    )  # fmt: skip
    assert is_refresh(refresh) and not is_refresh(request(selection="recent"))
    r = (await runs.run(refresh, "run-r")).record
    assert r.refresh and r.n_holdout == 100
    assert r.n_comparison == round(100 * PROJECT.promotion.compare_recent)
    assert json.loads(artifacts.objects[r.metadata_key])["refresh"] is True
    plain = (await runs.run(request("req-m", selection="recent"), "run-m")).record
    assert not plain.refresh and plain.n_comparison == 100
