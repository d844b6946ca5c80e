"""The features service: what it is, and ``wire``, the one place that builds its objects.

Unlike the other services it consumes with a faust app (changelogged per-entity window tables,
an offset guard), not with the library's consumer runner: ``wire`` builds the app and hands it to
the library as the wiring's ``context``, held open while the HTTP app serves the online store,
in one process and one event loop.
"""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass
from pathlib import Path

import faust

from driftline.catalog import FEATURES_VECTORS
from driftline.logging import get_logger
from driftline.projects import Applied
from driftline.runtime import Runtime
from driftline.service import Service, Wiring
from driftline_features import api, stream
from driftline_features.config import NAME, FeaturesSettings
from driftline_features.handlers import FeatureProcessor
from driftline_features.store import OnlineStore, prune_history
from driftline_ml.online import FeatureSets

log = get_logger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"


@dataclass(frozen=True)
class FeaturesDeps:
    store: OnlineStore
    sets: FeatureSets
    processor: FeatureProcessor
    app: faust.App
    control: stream.StreamControl

    def current_versions(self) -> dict[str, str]:
        return {name: pf.version for name, pf in self.sets.by_project.items()}


async def wire(rt: Runtime, settings: FeaturesSettings) -> Wiring[FeaturesDeps]:
    stack = settings.stack
    if settings.gc_threshold:
        # The middle generation after 20 young collections, the oldest after 100 of those (Python:
        # 10 and 10): cycles are still collected, the long-lived window states rarely traversed.
        gc.set_threshold(settings.gc_threshold, 20, 100)
    sets = FeatureSets(keep_last=settings.dedupe_keep, max_entries=settings.max_entity_events)
    sets.update(rt.projects.values())

    def projects_changed(name: str, state: Applied | None) -> None:
        sets.update(rt.projects.values())
        log.info(
            "features_projects_changed",
            project=name,
            version=state.version if state else None,
            feature_set_version=state.feature_set_version if state else None,
            projects={n: pf.version for n, pf in sets.by_project.items()},
        )

    rt.projects.listeners.append(projects_changed)
    partitions, replication = await stream.source_layout(stack)  # the tables mirror events.raw
    assert rt.pool is not None
    store = OnlineStore(rt.pool)
    control = stream.StreamControl()
    processor = FeatureProcessor(
        sets=sets,
        decoder=rt.serde,
        producer=rt.producer,
        store=store,
        group=stack.topic_prefix + NAME,
        stopping=lambda: control.stopping,
        chunk_size=settings.chunk_size,
    )
    app = stream.build_stream(settings, processor, control, partitions=partitions, replication_factor=replication)
    log.info(
        "features_starting",
        app_id=app.conf.id,
        group_instance_id=app.conf.consumer_group_instance_id,
        projects={n: pf.version for n, pf in sets.by_project.items()},
        partitions=partitions,
    )
    if settings.faust_log_level:  # the platform keeps these at WARNING; rebalances show at INFO
        for name in ("faust", "mode", "aiokafka"):
            logging.getLogger(name).setLevel(settings.faust_log_level.upper())
    retention_days = settings.history_retention_days
    return Wiring(
        deps=FeaturesDeps(store, sets, processor, app, control),
        consumes=[],  # events.raw is consumed by the faust app (the context), not a consumer runner
        context=lambda: stream.running(app, control, drain_timeout_s=settings.drain_timeout_s),
        loops=[lambda: prune_history(store, retention_days)] if retention_days > 0 else [],
        readiness={"stream": lambda: stream.readiness(app, control)},
    )


SERVICE: Service[FeaturesSettings, FeaturesDeps] = Service(
    name=NAME,
    title="Driftline features",
    description="Per-entity windowed features from events.raw to features.vectors, and the online store.",
    wire=wire,
    produces=[FEATURES_VECTORS],
    routers=[api.router],
    postgres_schema=NAME,
    migrations=MIGRATIONS,
    pool_size=lambda settings: settings.store_pool_size,
)
