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


def vector(raw_id: str = "raw-1") -> FeatureVectorComputed:
    return FeatureVectorComputed(
        **envelope("test"),
        source_event_id=raw_id,
        entity_id="c1",
        feature_set_version=PROJECT.features.version,
        features={"salary": 1.0},
    )


@dataclass
class SavingStore(FakeStore):
    saved: list[tuple[list[Any], list[Any]]] = field(default_factory=list)

    async def save_examples(self, vectors: Any, labels: Any) -> None:
        self.saved.append((list(vectors), list(labels)))


async def test_a_label_outside_the_project_classes_is_a_poison_record() -> None:
    with pytest.raises(PoisonRecord, match="maybe"):
        await handlers(FakeStore()).on_examples([event(LABELS, label("maybe"))])


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
