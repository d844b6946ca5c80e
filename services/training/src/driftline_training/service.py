"""The training service: what it consumes, produces and serves, and the one place that wires it."""

from __future__ import annotations

from pathlib import Path

from driftline.artifacts import ArtifactStore
from driftline.auth import TokenAuth
from driftline.catalog import (
    DRIFT_DETECTED,
    FEATURES_VECTORS,
    LABELS,
    MODELS_PROMOTED,
    MODELS_TRAINED,
    TRAINING_FAILED,
    TRAINING_REQUESTED,
)
from driftline.logging import get_logger
from driftline.outbox import Outbox
from driftline.project import Project, project_from_settings
from driftline.projects import Applied
from driftline.runtime import Runtime
from driftline.service import Consume, Service, Wiring
from driftline_training.api import TrainingDeps, router
from driftline_training.artifacts import RunArtifacts
from driftline_training.champion import ChampionEvaluator
from driftline_training.config import TrainingSettings
from driftline_training.handlers import ProjectsTraining, TrainingHandlers
from driftline_training.runs import Runs
from driftline_training.store import TrainingStore
from driftline_training.triggers import Triggers

NAME = "training"
log = get_logger(__name__)


def assemble(
    project: Project,
    store: TrainingStore,
    outbox: Outbox,
    artifacts: ArtifactStore,
    producer_name: str,
    settings: TrainingSettings,
    feature_set_version: str = "",
) -> TrainingHandlers:
    """One project's handlers and what they stand on, over a store, an outbox and an object store
    (``feature_set_version``: its vectors', default its file's ``features.version``)."""
    triggers = Triggers(project, store, outbox, producer_name, feature_set_version)
    run_artifacts = RunArtifacts(artifacts, settings.object_store_timeout_s)
    runs = Runs(
        project=project,
        store=store,
        artifacts=run_artifacts,
        champions=ChampionEvaluator(
            run_artifacts,
            project.label.positive_class,
            settings.min_comparison_examples,
            project.promotion.compare_recent,
        ),
        triggers=triggers,
        outbox=outbox,
        producer_name=producer_name,
        max_run_seconds=settings.max_run_seconds,
        run_attempts=settings.run_attempts,
        retry_backoff_s=settings.retry_backoff_s,
        feature_set_version=feature_set_version,
    )
    return TrainingHandlers(project, store, triggers, runs)


async def wire(rt: Runtime, settings: TrainingSettings) -> Wiring[TrainingDeps]:
    assert rt.pool is not None and rt.artifacts is not None
    project = project_from_settings(settings.stack)
    store = TrainingStore(rt.pool, default_project=project.name)
    outbox = Outbox(rt.pool, rt.producer)
    await outbox.ensure_table()
    artifacts = rt.artifacts
    training = ProjectsTraining(
        store,
        lambda p, fsv: assemble(p, store, outbox, artifacts, rt.producer.name, settings, fsv),
        default=project.name,
    )
    training.update(rt.projects.values())

    def projects_changed(name: str, state: Applied | None) -> None:
        training.update(rt.projects.values())
        log.info(
            "training_projects_changed",
            project=name,
            version=state.version if state else None,
            models=sorted(training.by_model),
        )

    rt.projects.listeners.append(projects_changed)
    deps = TrainingDeps(project, store, rt.producer, TokenAuth.from_settings(settings.stack, NAME), training)
    # Three groups, so that a long fit never delays examples or champion updates.
    return Wiring(
        deps,
        consumes=[
            Consume(batch=training.on_examples, topics=[FEATURES_VECTORS, LABELS], group=NAME),
            Consume(
                routes={DRIFT_DETECTED: training.on_drift, MODELS_PROMOTED: training.on_promoted},
                group=f"{NAME}-control",
            ),
            Consume(
                routes={TRAINING_REQUESTED: training.on_request},
                group=f"{NAME}-runs",
                # One request at a time, and a poll interval above the longest run.
                options={
                    "max_records": 1,
                    "consumer_options": {"max_poll_interval_ms": int((settings.max_run_seconds + 120) * 1000)},
                },
            ),
        ],
        loops=[lambda: outbox.run_relay(interval_s=settings.outbox_interval_s)],
    )


SERVICE: Service[TrainingSettings, TrainingDeps] = Service(
    name=NAME,
    title="Driftline training",
    description="Labelled examples, governed retraining and safe model artifacts.",
    wire=wire,
    produces=(TRAINING_REQUESTED, MODELS_TRAINED, TRAINING_FAILED),
    routers=(router,),
    postgres_schema="training",
    migrations=Path(__file__).parent / "migrations",
    artifacts=True,
)
