"""What the training service does with each record it consumes (routed by topic in ``service.py``).

* ``features.vectors`` + ``labels`` → labelled examples (upserts; joined by the raw event id),
  then the drift runs that waited for labels, and maybe the first model (:mod:`.triggers`);
* ``drift.detected`` → at most one ``training.requested`` per drift episode (:mod:`.triggers`,
  decided by :mod:`.trigger_policy`);
* ``models.promoted`` → the champion each run compares itself with (:mod:`.champion`);
* ``training.requested`` → a run (:mod:`.runs`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from driftline.events import Event
from driftline.logging import get_logger
from driftline.project import Project
from driftline.projects import Applied
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
                vectors.append(checked_vector(record))
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


def checked_vector(vector: FeatureVectorComputed) -> FeatureVectorComputed:
    """A vector with no features is no example: it goes to the dead-letter topic."""
    if not vector.features:
        raise PoisonRecord(f"the feature vector of event {vector.source_event_id} has no features", "empty_features")
    return vector


class ProjectsTraining:
    """Every project's training, as the projects topic has them: the examples of all projects are
    stored together (each vector with its project), and drift events and requests go to the
    handlers of their model's project. ``build`` makes one project's handlers (see
    ``service.assemble``); ``default`` names the configured project, whose handlers also take the
    drift events and requests of a model no project has (they record them as ignored or failed)."""

    def __init__(
        self,
        store: TrainingStore,
        build: Callable[[Project, str], TrainingHandlers],
        default: str | None = None,
    ) -> None:
        self.store = store
        self.build = build
        self.default = default
        self.by_model: dict[str, TrainingHandlers] = {}
        self._digests: dict[str, str] = {}

    def update(self, projects: Iterable[Applied]) -> None:
        """Build the handlers of new or changed projects; drop those of deleted ones."""
        by_model: dict[str, TrainingHandlers] = {}
        digests: dict[str, str] = {}
        for applied in projects:
            name = applied.project.model.name
            known = self.by_model.get(name)
            if known is not None and self._digests.get(name) == applied.digest:
                by_model[name] = known
            else:
                by_model[name] = self.build(applied.project, applied.feature_set_version)
            digests[name] = applied.digest
        self.by_model, self._digests = by_model, digests

    def of_model(self, model_name: str) -> TrainingHandlers | None:
        return self.by_model.get(model_name)

    def _fallback(self) -> TrainingHandlers | None:
        if self.default is not None:
            for h in self.by_model.values():
                if h.project.name == self.default:
                    return h
        return next(iter(self.by_model.values()), None)

    def classes(self) -> set[str]:
        return {c for h in self.by_model.values() for c in h.project.label.classes}

    async def on_examples(self, events: Sequence[Event[Any]]) -> None:
        """Upsert a batch of vectors and labels; then each project's waiting drift runs and first model."""
        vectors: list[FeatureVectorComputed] = []
        labels: list[LabelRecorded] = []
        classes = self.classes()
        for e in events:
            record = e.record
            if isinstance(record, FeatureVectorComputed):
                vectors.append(checked_vector(record))
            elif isinstance(record, LabelRecorded):
                if not isinstance(record.label, str) or record.label not in classes:
                    raise PoisonRecord(
                        f"label {record.label!r} is not one of any project's classes {sorted(classes)}",
                        "invalid_label",
                    )
                labels.append(record)
        await self.store.save_examples(vectors, labels)
        waiting = {t.model_name for t in await self.store.waiting_triggers()}
        for name, h in list(self.by_model.items()):
            if name in waiting:
                await h.triggers.retry_waiting()
            await h.triggers.request_initial()

    async def on_drift(self, e: DriftDetected) -> None:
        h = self.of_model(e.model_name) or self._fallback()
        if h is None:
            log.warning("drift_of_no_project_ignored", model_name=e.model_name, episode_id=e.episode_id)
            return
        await h.on_drift(e)  # another project's handlers record it as ignored (not their model)

    async def on_promoted(self, e: ModelPromoted) -> None:
        if e.action not in CHAMPION_ACTIONS:
            return
        await self.store.set_champion(Champion.from_promoted(e), promoted_event_id=e.event_id, action=e.action)
        log.info("champion_changed", model_name=e.model_name, version=e.version, action=e.action)

    async def on_request(self, e: TrainingRequested) -> None:
        h = self.of_model(e.model_name) or self._fallback()
        if h is None:
            raise PoisonRecord(f"no project trains model {e.model_name!r}", "unknown_model")
        await h.on_request(e)  # a model of no project's fails there as unknown_model
