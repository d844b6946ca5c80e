"""Stack initialisation from the topic catalog: topics, schema subjects, the artifact bucket.

Idempotent: a second run changes nothing. ``driftline stack init`` calls it after ``make up``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from driftline.artifacts import ArtifactStore
from driftline.catalog import Catalog, canonical_schema_str, default_catalog
from driftline.kafka import ensure_topics
from driftline.serde import SchemaRegistryClient
from driftline.settings import StackSettings


@dataclass
class InitReport:
    topics_created: list[str] = field(default_factory=list)
    schemas: dict[str, int] = field(default_factory=dict)  # subject → schema id
    bucket: str = ""


async def register_schemas(registry: SchemaRegistryClient, catalog: Catalog, prefix: str = "") -> dict[str, int]:
    """Register every topic's schema under ``<topic>-value`` with BACKWARD compatibility.

    A schema change that is not backward compatible is refused here by the registry.
    """
    ids: dict[str, int] = {}
    for topic in catalog:
        subject = topic.subject(prefix)
        await registry.set_compatibility(subject, "BACKWARD")
        ids[subject] = await registry.register(subject, canonical_schema_str(topic.record))
    return ids


async def init_stack(stack: StackSettings, catalog: Catalog | None = None) -> InitReport:
    catalog = catalog or default_catalog()
    report = InitReport()
    report.topics_created = await ensure_topics(stack.kafka_bootstrap_servers, catalog, stack.topic_prefix)
    registry = SchemaRegistryClient(stack.schema_registry_url)
    try:
        report.schemas = await register_schemas(registry, catalog, stack.topic_prefix)
    finally:
        await registry.close()
    store = ArtifactStore.from_settings(stack)
    await store.ensure_bucket()
    report.bucket = store.bucket
    return report
