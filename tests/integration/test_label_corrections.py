"""Label corrections are records, not edits: training keeps every label record and a run takes
each example's latest label recorded by its start. The real database and the training service's
own migrations are used here."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import driftline_training
from driftline.db import apply_migrations, create_pool
from driftline.events import envelope, new_event_id
from driftline.records import FeatureVectorComputed, LabelRecorded
from driftline_training.store import TrainingStore
from tests.support import Namespace

MIGRATIONS = Path(driftline_training.__file__).parent / "migrations"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def label(event_id: str, value: str, minutes: int) -> LabelRecorded:
    return LabelRecorded(
        **envelope("test", event_time=T0 + timedelta(minutes=minutes)),
        labelled_event_id=event_id,
        entity_id="e1",
        label=value,
        source="test",
    )


async def test_a_run_uses_the_labels_recorded_by_its_start_and_keeps_which_record(namespace: Namespace) -> None:
    pool = await create_pool(namespace.stack.postgres_dsn.get_secret_value(), "training")
    try:
        await apply_migrations(pool, "training", MIGRATIONS)
        store = TrainingStore(pool, default_project="p")
        raw = new_event_id()
        vector = FeatureVectorComputed(
            **envelope("test", event_time=T0),
            source_event_id=raw,
            entity_id="e1",
            feature_set_version="1",
            features={"x": 1.0},
            project="p",
        )
        first = label(raw, "approve", 5)
        await store.save_examples([vector], [first])
        await asyncio.sleep(0.01)
        as_of = await store.clock()
        correction = label(raw, "deny", 30)
        await store.save_examples([], [correction])
        await store.save_examples([], [first])  # a replay of the first record changes nothing

        (before,) = await store.select_examples("1", ["approve", "deny"], since=None, limit=10, labels_as_of=as_of)
        assert (before.label, before.label_event_id) == ("approve", first.event_id)
        (now,) = await store.select_examples("1", ["approve", "deny"], since=None, limit=10, labels_as_of=None)
        assert (now.label, now.label_event_id, now.label_time) == ("deny", correction.event_id, correction.event_time)
        counts = await store.example_counts("1", ["approve", "deny"], "p")
        assert (counts["labels"], counts["label_records"], counts["labelled"]) == (1, 2, 1)
    finally:
        await pool.close()
