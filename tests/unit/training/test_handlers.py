"""The training handlers take typed records and hand them on: examples, champions, drift, requests."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from driftline.catalog import FEATURES_VECTORS, LABELS, TRAINING_REQUESTED
from driftline.events import envelope
from driftline.records import FeatureVectorComputed, LabelRecorded
from driftline.retry import PoisonRecord
from tests.unit.training.fakes import PROJECT, FakeStore, drift_record, event, handlers, promoted


def label(value: str, raw_id: str = "raw-1") -> LabelRecorded:
    return LabelRecorded(**envelope("test"), labelled_event_id=raw_id, entity_id="c1", label=value, source="test")


def vector(raw_id: str = "raw-1", features: dict[str, Any] | None = None) -> FeatureVectorComputed:
    return FeatureVectorComputed(
        **envelope("test"),
        source_event_id=raw_id,
        entity_id="c1",
        feature_set_version=PROJECT.features.version,
        features={"salary": 1.0} if features is None else features,
    )


@dataclass
class SavingStore(FakeStore):
    saved: list[tuple[list[Any], list[Any]]] = field(default_factory=list)

    async def save_examples(self, vectors: Any, labels: Any) -> None:
        self.saved.append((list(vectors), list(labels)))


async def test_a_label_outside_the_project_classes_is_a_poison_record() -> None:
    with pytest.raises(PoisonRecord, match="maybe"):
        await handlers(FakeStore()).on_examples([event(LABELS, label("maybe"))])


async def test_a_vector_with_no_features_is_a_poison_record_and_nothing_of_its_batch_is_saved() -> None:
    store = SavingStore()
    with pytest.raises(PoisonRecord, match="raw-9 has no features"):
        await handlers(store).on_examples(
            [event(FEATURES_VECTORS, vector()), event(FEATURES_VECTORS, vector("raw-9", {}))]
        )
    assert not store.saved


async def test_vectors_and_labels_of_a_batch_are_saved_together() -> None:
    store = SavingStore()
    v, lb = vector(), label(PROJECT.label.positive_class)
    await handlers(store).on_examples([event(FEATURES_VECTORS, v), event(LABELS, lb)])
    assert store.saved == [([v], [lb])]


async def test_only_promotions_and_rollbacks_change_the_champion() -> None:
    store = FakeStore()
    h = handlers(store)
    for action in ("shadow", "promote", "rollback"):
        await h.on_promoted(promoted(action=action))
    assert [a for _, a in store.champions] == ["promote", "rollback"]
    assert store.champions[0][0].version == 2 and store.champions[0][0].feature_names == ("salary",)


async def test_a_drift_of_this_projects_model_requests_a_run_in_its_chain() -> None:
    store = FakeStore(labelled=PROJECT.training.min_examples)
    drift = drift_record(datetime(2026, 11, 30, 12, 0, tzinfo=UTC))
    await handlers(store).on_drift(drift)
    (request,) = store.staged_on(TRAINING_REQUESTED)
    assert (request.correlation_id, request.causation_id) == (drift.correlation_id, drift.event_id)
    assert request.reason == "drift" and request.drift_episode_id == "episode-1"


def projects_training(store: FakeStore) -> Any:
    """Training for the loan and machine-health projects, as the projects topic would have them."""
    from driftline.projects import Definition, ProjectBook, applied_record, plan
    from driftline_training.handlers import ProjectsTraining
    from tests.support import ROOT

    book = ProjectBook()
    for path in ("examples/loan_approval/project.yaml", "examples/machine_health/project.yaml"):
        d = Definition.from_file(ROOT / path)
        book.take(applied_record(d, plan(d, None), producer="t", applied_by="t"))
    training = ProjectsTraining(store, lambda p, fsv: handlers(store, project=p), default=PROJECT.name)
    training.update(book.values())
    return training


async def test_drift_goes_to_its_models_project_and_a_model_of_no_project_is_ignored() -> None:
    store = FakeStore()
    training = projects_training(store)
    assert sorted(training.by_model) == ["loan-approval", "machine-health"]
    assert training.of_model("machine-health").project.label.classes == ["ok", "failure"]
    await training.on_drift(drift_record(None, episode_id="e-machine", model_name="machine-health"))
    await training.on_drift(drift_record(None, episode_id="e-other", model_name="parcel-eta"))
    decided = {t.episode_id: (t.model_name, t.decision) for t in store.triggers.values()}
    assert decided["e-machine"][0] == "machine-health" and decided["e-machine"][1] != "ignored"
    assert decided["e-other"] == ("parcel-eta", "ignored")


async def test_a_label_of_any_projects_classes_is_kept_and_others_are_poison() -> None:
    store = SavingStore()
    training = projects_training(store)
    await training.on_examples([event(LABELS, label("failure")), event(LABELS, label("approve", "raw-2"))])
    assert [lb.label for lb in store.saved[0][1]] == ["failure", "approve"]
    with pytest.raises(PoisonRecord, match="maybe"):
        await training.on_examples([event(LABELS, label("maybe"))])
