"""Kafka topic admin on aiokafka: creating the catalog's topics and reading a topic's partitions.

The producer is in :mod:`driftline.producer`, the consumer runner in :mod:`driftline.consumer`, and
the retry of outages in :mod:`driftline.retry`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from driftline.catalog import Catalog
from driftline.connect import KafkaConnection
from driftline.retry import start_client


async def partitions_of(kafka: KafkaConnection, topics: Sequence[str]) -> list[TopicPartition]:
    """Every partition of each (physical) topic, from the cluster's metadata (the admin client's
    public describe call: a consumer only caches metadata of topics it subscribed to). A topic
    the cluster does not know has no partitions here."""
    admin = AIOKafkaAdminClient(**kafka.client_kwargs(), client_id="driftline-metadata")
    await admin.start()
    try:
        described = await admin.describe_topics(list(topics))
    finally:
        await admin.close()
    found = {d["topic"]: sorted(p["partition"] for p in d["partitions"]) for d in described if not d["error_code"]}
    return [TopicPartition(t, p) for t in topics for p in found.get(t, [])]


async def ensure_topics(
    kafka: KafkaConnection,
    catalog: Catalog,
    prefix: str = "",
    *,
    timeout_s: float = 60,
    replication_factor: int | None = None,
) -> list[str]:
    """Create the catalog's missing topics (names prefixed with ``prefix``); returns those created.

    ``replication_factor`` overrides the catalog's for every topic created (production clusters).
    """
    admin = AIOKafkaAdminClient(**kafka.client_kwargs(), client_id="driftline-admin")
    deadline = time.monotonic() + timeout_s
    await start_client(admin.start, kafka, what="kafka admin start", stopping=lambda: time.monotonic() > deadline)
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in catalog if prefix + t.name not in existing]
        if not missing:
            return []
        resp = await admin.create_topics(
            [
                NewTopic(
                    prefix + t.name,
                    t.partitions,
                    replication_factor or t.replication_factor,
                    topic_configs=t.kafka_config(),
                )
                for t in missing
            ]
        )
        for topic_error in resp.topic_errors:
            name, code = topic_error[0], topic_error[1]
            if code not in (0, 36):  # 36: TOPIC_ALREADY_EXISTS (a concurrent init)
                raise KafkaError(f"creating topic {name} failed with error code {code}: {topic_error[2:]}")
        return [prefix + t.name for t in missing]
    finally:
        await admin.close()
