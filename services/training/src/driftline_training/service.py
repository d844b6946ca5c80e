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
from driftline.outbox import Outbox
from driftline.project import Project, project_from_settings
from driftline.runtime import Runtime
from driftline.service import Consume, Service, Wiring
from driftline_training.api import TrainingDeps, router
from driftline_training.artifacts import RunArtifacts
from driftline_training.champion import ChampionEvaluator
from driftline_training.config import TrainingSettings
from driftline_training.handlers import TrainingHandlers
from driftline_training.runs import Runs
from driftline_training.store import TrainingStore
from driftline_training.triggers import Triggers

NAME = "training"


def assemble(
    project: Project,
    store: TrainingStore,
    outbox: Outbox,
    artifacts: ArtifactStore,
    producer_name: str,
    settings: TrainingSettings,
) -> TrainingHandlers:
    """The handlers and what they stand on, over a store, an outbox and an object store."""
    triggers = Triggers(project, store, outbox, producer_name)
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
    )
    return TrainingHandlers(project, store, triggers, runs)


async def wire(rt: Runtime, settings: TrainingSettings) -> Wiring[TrainingDeps]:
    assert rt.pool is not None and rt.artifacts is not None
    project = project_from_settings(settings.stack)
    store = TrainingStore(rt.pool)
    outbox = Outbox(rt.pool, rt.producer)
    await outbox.ensure_table()
    h = assemble(project, store, outbox, rt.artifacts, rt.producer.name, settings)
    deps = TrainingDeps(project, store, rt.producer, TokenAuth.from_settings(settings.stack, NAME), h.runs)
    # Three groups, so that a long fit never delays examples or champion updates.
    return Wiring(
        deps,
        consumes=[
            Consume(batch=h.on_examples, topics=[FEATURES_VECTORS, LABELS], group=NAME),
            Consume(routes={DRIFT_DETECTED: h.on_drift, MODELS_PROMOTED: h.on_promoted}, group=f"{NAME}-control"),
            Consume(
                routes={TRAINING_REQUESTED: h.on_request},
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
