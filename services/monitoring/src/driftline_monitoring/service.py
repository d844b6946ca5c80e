"""The monitoring service: what it consumes, follows, produces and serves, and ``wire``, the one
place that builds its objects."""

from __future__ import annotations

from pathlib import Path

from aiokafka.coordinator.assignors.range import RangePartitionAssignor

from driftline.catalog import (
    DEPLOYMENTS_STATUS,
    DRIFT_DETECTED,
    FEATURES_VECTORS,
    LABELS,
    MODELS_COMPARED,
    MODELS_PROMOTED,
    MODELS_REJECTED,
    PREDICTIONS,
    TRAINING_FAILED,
)
from driftline.consumer import Routes
from driftline.project import PromotionPolicy, project_from_settings
from driftline.records import ChallengerCompared, FeatureVectorComputed
from driftline.runtime import Runtime
from driftline.service import Consume, Follow, Service, Wiring
from driftline_monitoring import api
from driftline_monitoring.api import MonitoringDeps
from driftline_monitoring.config import MonitoringSettings
from driftline_monitoring.episodes import Episodes
from driftline_monitoring.handlers import ModelPolicy, Monitoring, in_offset_order
from driftline_monitoring.store import MonitoringStore


async def wire(rt: Runtime, settings: MonitoringSettings) -> Wiring[MonitoringDeps]:
    assert rt.pool is not None
    project = project_from_settings(settings.stack)
    policy = project.drift
    store = MonitoringStore(rt.pool)
    projects = rt.projects

    def policies(model_name: str) -> ModelPolicy | None:
        """The drift policy and training limits of a model's project, as the topic holds it now."""
        applied = projects.by_model(model_name)
        if applied is None:
            return None
        p = applied.project
        return p.drift, p.training.max_examples, p.training.min_examples

    def promotion_of(model_name: str) -> PromotionPolicy | None:
        applied = projects.by_model(model_name)
        return applied.project.promotion if applied is not None else None

    async def publish_verdict(record: ChallengerCompared) -> None:
        await rt.producer.publish(MODELS_COMPARED, record)

    def model_of(vector: FeatureVectorComputed) -> str | None:
        if vector.project is None:
            return None  # written before projects were data: every champion watches it
        applied = projects.get(vector.project)
        return applied.project.model.name if applied is not None else ""

    monitoring = Monitoring(
        policy=policy,
        episodes=Episodes(store, rt.producer, touch_every_s=settings.touch_every_s),
        artifacts=rt.artifacts_for,
        resolve_after=settings.resolve_after,
        join_capacity=settings.join_capacity,
        max_examples=project.training.max_examples,
        min_examples=project.training.min_examples,
        policies=policies,
        model_of=model_of,
        promotion_of=promotion_of,
        publish_verdict=publish_verdict,
    )
    data: Routes = {
        FEATURES_VECTORS: monitoring.on_vector,
        PREDICTIONS: monitoring.on_prediction,
        LABELS: monitoring.on_label,
    }
    return Wiring(
        deps=MonitoringDeps(monitoring, store, policy, settings.page_checks, rt.projects),
        consumes=[
            Consume(
                routes=data,  # a failed batch is isolated record by record through them
                batch=in_offset_order(data),
                group=settings.group_id,
                options={
                    "max_records": settings.max_records,
                    # Same partition number of the three entity-keyed topics on the same instance (the joins).
                    "consumer_options": {"partition_assignment_strategy": (RangePartitionAssignor,)},
                },
            )
        ],
        follows=[
            Follow(
                name="monitoring",
                # What is promoted, and what deployment then serves (a refused promotion changes nothing).
                # Replayed before the consumer group starts, so early records are not ignored.
                # And what became of the runs an episode asked for (it asks again only then).
                topics=[MODELS_PROMOTED, DEPLOYMENTS_STATUS, MODELS_REJECTED, TRAINING_FAILED],
                on_replayed=monitoring.on_replayed,
                routes={
                    MODELS_PROMOTED: monitoring.on_promoted,
                    DEPLOYMENTS_STATUS: monitoring.on_deployment_status,
                    MODELS_REJECTED: monitoring.on_run_outcome,
                    TRAINING_FAILED: monitoring.on_run_outcome,
                },
            )
        ],
    )


SERVICE: Service[MonitoringSettings, MonitoringDeps] = Service(
    name="monitoring",
    title="Driftline monitoring",
    description="Input, prediction and performance drift of the champion models; drift episodes.",
    wire=wire,
    produces=[DRIFT_DETECTED, MODELS_COMPARED],
    routers=[api.router],
    postgres_schema="monitoring",
    migrations=Path(__file__).parent / "migrations",
    artifacts=True,
)
