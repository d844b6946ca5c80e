"""The deployment service: what it follows (``models.promoted``, replayed in full: the model
slots are rebuilt from it), consumes (``features.vectors``, scored in batches), produces and
serves; ``wire`` is the one place that builds its objects.

Its PostgreSQL pool is the online store's (schema ``features``, owned and migrated by the features
service): ``POST /v1/predict`` of a raw event reads its entity's window state there, through
:mod:`driftline_ml.online`, the code that writes it."""

from __future__ import annotations

import asyncio

from driftline.catalog import DEPLOYMENTS_STATUS, FEATURES_VECTORS, MODELS_PROMOTED, PREDICTIONS
from driftline.project import project_from_settings
from driftline.projects import Applied
from driftline.records import FeatureVectorComputed
from driftline.runtime import Runtime
from driftline.service import Consume, Follow, Service, Wiring
from driftline_deployment import api
from driftline_deployment.api import DeploymentDeps
from driftline_deployment.config import DeploymentSettings
from driftline_deployment.features import RawEventFeatures
from driftline_deployment.handlers import Deployer, Scorer
from driftline_deployment.loader import ModelLoader, ProcessLoader, ThreadLoader
from driftline_deployment.publish import PredictionPublisher
from driftline_deployment.slots import ModelSlots
from driftline_ml.online import read_states


async def wire(rt: Runtime, settings: DeploymentSettings) -> Wiring[DeploymentDeps]:
    project = project_from_settings(settings.stack)
    slots = ModelSlots()
    loader: ModelLoader = ProcessLoader() if settings.load_in_process else ThreadLoader()
    deployer = Deployer(
        slots=slots,
        producer=rt.producer,
        artifacts=rt.artifacts_for,  # a promotion names the bucket of its artifact
        instance_id=settings.instance_id,
        default_positive_class=project.label.positive_class,
        shadow=settings.shadow,
        fallback_depth=settings.fallback_depth,
        loader=loader,
        serves=lambda model_name: rt.projects.by_model(model_name) is not None,
    )
    projects = rt.projects
    models_of_projects = {a.name: a.project.model.name for a in projects.values()}
    pool = rt.pool
    assert pool is not None
    raw = RawEventFeatures(lambda keys: read_states(pool, keys))
    raw.update(projects.values())
    publisher = PredictionPublisher(
        rt.producer, max_pending=settings.publish_max_pending, drain_timeout_s=settings.drain_timeout_s
    )

    async def on_project(name: str, applied: Applied | None) -> None:
        raw.update(projects.values())
        if applied is not None:
            models_of_projects[name] = applied.project.model.name
        elif name in models_of_projects:
            await deployer.on_project_deleted(name, models_of_projects.pop(name))

    projects.listeners.append(on_project)

    def model_of(vector: FeatureVectorComputed) -> str | None:
        """The model of a vector's project; a vector of no project (written before projects were
        data) is the configured project's."""
        if vector.project is None:
            return project.model.name
        applied = projects.get(vector.project)
        return applied.project.model.name if applied is not None else None

    scorer = Scorer(slots=slots, producer=rt.producer, model_of=model_of, shadow=settings.shadow)

    async def close_loader() -> None:
        await asyncio.to_thread(loader.close)

    return Wiring(
        deps=DeploymentDeps(
            settings=settings,
            model_name=project.model.name,
            slots=slots,
            deployer=deployer,
            raw=raw,
            publisher=publisher,
        ),
        # Scoring starts once the slots are rebuilt (the library's caught-up gate), so vectors are
        # not skipped as "no model"; /readyz waits for it too (check follower:deployment).
        follows=[
            Follow(
                name="deployment",
                topics=[MODELS_PROMOTED, DEPLOYMENTS_STATUS],  # its own announcements: not repeated
                on_replayed=deployer.on_replayed,
                routes={MODELS_PROMOTED: deployer.on_promoted, DEPLOYMENTS_STATUS: deployer.on_status},
            )
        ],
        consumes=[
            Consume(
                routes={FEATURES_VECTORS: scorer.score_one},  # isolates a bad vector when its batch fails
                batch=scorer.score_batch,
                group=settings.group_id,
                options={"max_records": settings.score_max_records},
            )
        ],
        on_stop=[publisher.drain, close_loader],
    )


SERVICE: Service[DeploymentSettings, DeploymentDeps] = Service(
    name="deployment",
    title="Driftline deployment",
    description="Serves the champion model, scores features.vectors, shadows the challenger.",
    wire=wire,
    produces=[PREDICTIONS, DEPLOYMENTS_STATUS],
    routers=[api.router],
    artifacts=True,
    scopes={"/v1/predict": "predict"},  # outside local mode (reads need "read")
    postgres_schema="features",  # the online store (read only; the features service migrates it)
    pool_size=lambda settings: settings.store_pool_size,
)
