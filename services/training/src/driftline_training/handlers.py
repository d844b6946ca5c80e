"""What the training service does with each record it consumes (routed by topic in ``service.py``).

* ``features.vectors`` + ``labels`` → labelled examples (upserts; joined by the raw event id),
  then the drift runs that waited for labels, and maybe the first model (:mod:`.triggers`);
* ``drift.detected`` → at most one ``training.requested`` per drift episode (:mod:`.triggers`,
  decided by :mod:`.trigger_policy`);
* ``models.promoted`` → the champion each run compares itself with (:mod:`.champion`);
* ``training.requested`` → a run (:mod:`.runs`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from driftline.events import Event
from driftline.logging import get_logger
from driftline.project import Project
from driftline.records import DriftDetected, FeatureVectorComputed, LabelRecorded, ModelPromoted, TrainingRequested
from driftline.retry import PoisonRecord
from driftline_training.champion import CHAMPION_ACTIONS, Champion
from driftline_training.runs import Runs
from driftline_training.store import TrainingStore
from driftline_training.triggers import Triggers

log = get_logger(__name__)


@dataclass
class TrainingHandlers:
    project: Project
    store: TrainingStore
    triggers: Triggers
    runs: Runs

    async def on_examples(self, events: Sequence[Event[Any]]) -> None:
        """Batch handler of features.vectors and labels: upsert, then re-ask waiting drift runs, maybe a first model."""
        vectors: list[FeatureVectorComputed] = []
        labels: list[LabelRecorded] = []
        for e in events:
            record = e.record
            if isinstance(record, FeatureVectorComputed):
                vectors.append(record)
            elif isinstance(record, LabelRecorded):
                labels.append(self._checked(record))
        await self.store.save_examples(vectors, labels)
        await self.triggers.retry_waiting()
        await self.triggers.request_initial()

    def _checked(self, label: LabelRecorded) -> LabelRecorded:
        classes = self.project.label.classes
        if not isinstance(label.label, str) or label.label not in classes:
            raise PoisonRecord(f"label {label.label!r} is not one of the project's classes {classes}", "invalid_label")
        return label

    async def on_drift(self, e: DriftDetected) -> None:
        await self.triggers.drift(e)

    async def on_promoted(self, e: ModelPromoted) -> None:
        if e.action not in CHAMPION_ACTIONS:
            return  # a shadow deployment does not change the champion
        await self.store.set_champion(Champion.from_promoted(e), promoted_event_id=e.event_id, action=e.action)
        log.info("champion_changed", model_name=e.model_name, version=e.version, action=e.action)

    async def on_request(self, e: TrainingRequested) -> None:
        await self.runs.handle(e)
