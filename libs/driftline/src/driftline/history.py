"""Reading the platform's history back from Kafka: topic offsets and lag, and causal chains.

The control topics keep every record (retention -1), so the chain of a drift episode
(drift.detected → training.requested → models.trained → models.promoted → deployments.status),
or of a shadow verdict (models.compared → models.promoted → deployments.status), can be rebuilt
from the topics alone, by correlation id, with each step's cause.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from driftline.catalog import (
    DEPLOYMENTS_STATUS,
    DRIFT_DETECTED,
    MODELS_COMPARED,
    MODELS_PROMOTED,
    MODELS_REJECTED,
    MODELS_TRAINED,
    TRAINING_FAILED,
    TRAINING_REQUESTED,
    default_catalog,
)
from driftline.events import Event
from driftline.kafka import partitions_of
from driftline.serde import AvroSerde, DecodeError, SchemaRegistryClient
from driftline.settings import StackSettings

CHAIN_TOPICS = (
    DRIFT_DETECTED,
    TRAINING_REQUESTED,
    MODELS_TRAINED,
    TRAINING_FAILED,
    MODELS_COMPARED,
    MODELS_PROMOTED,
    MODELS_REJECTED,
    DEPLOYMENTS_STATUS,
)


async def read_topics(stack: StackSettings, topics: Sequence[str], *, timeout_s: float = 30) -> list[Event[Any]]:
    """Every record of ``topics`` from the beginning up to their current end, decoded."""
    registry = SchemaRegistryClient.from_settings(stack)
    serde = AvroSerde(registry, topic_prefix=stack.topic_prefix)
    consumer = AIOKafkaConsumer(**stack.kafka.client_kwargs(), enable_auto_commit=False, group_id=None)
    events: list[Event[Any]] = []
    await consumer.start()
    try:
        tps = await partitions_of(stack.kafka, [stack.topic_prefix + t for t in topics])
        if not tps:
            return []
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        remaining = {tp for tp in tps if end[tp] > 0}
        for tp in tps:
            if end[tp] > 0 and await consumer.position(tp) >= end[tp]:
                remaining.discard(tp)
        deadline = asyncio.get_running_loop().time() + timeout_s
        while remaining and asyncio.get_running_loop().time() < deadline:
            batch = await consumer.getmany(*remaining, timeout_ms=500)
            for tp, records in batch.items():
                for rec in records:
                    topic = rec.topic[len(stack.topic_prefix) :]
                    if rec.value is None:
                        continue  # a tombstone (projects delete): its key has no value any more
                    try:
                        value, sid = await serde.decode(rec.value, topic)
                    except DecodeError:
                        continue  # poison records are the DLQ's business, not history's
                    events.append(
                        Event(topic, rec.partition, rec.offset, rec.key, value, rec.value or b"", sid, rec.timestamp)
                    )
                if records and records[-1].offset + 1 >= end[tp]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()
        await registry.close()
    return events


# What each models.promoted action did, as the trace says it.
_DONE = {
    "promote": "promoted",
    "rollback": "brought back (rollback)",
    "shadow": "deployed in shadow",
    "canary": "deployed as canary",
    "canary_rollback": "withdrawn as canary",
}


def chain(events: Sequence[Event[Any]], correlation_id: str) -> list[Event[Any]]:
    """The events of one correlation id, causes before effects, then by production time."""
    mine = [e for e in events if e.correlation_id == correlation_id]
    by_id = {e.event_id: e for e in mine}

    def depth(e: Event[Any]) -> int:
        d, seen = 0, set()
        while e.value.get("causation_id") in by_id and e.event_id not in seen:
            seen.add(e.event_id)
            e = by_id[e.value["causation_id"]]
            d += 1
        return d

    return sorted(mine, key=lambda e: (depth(e), e.value["produced_at"]))


def describe(event: Event[Any]) -> str:
    """One line on what an event of the chain says."""
    v = event.value
    t = event.topic
    if t == DRIFT_DETECTED:
        feats = ",".join(v["features"]) or "-"
        attempt = int(v.get("attempt") or 1)
        if attempt > 1:  # a further training request of an open episode
            return (
                f"episode {v['episode_id']} attempt {attempt} ({v.get('reason')}) on {v['model_name']} "
                f"v{v['model_version']}: {v['method']}={v['statistic']:.4g} (threshold {v['threshold']:.4g}), "
                f"{v.get('labelled_since_onset')} labelled outcomes since the onset"
            )
        return (
            f"{v['kind']} drift on {v['model_name']} v{v['model_version']}: {v['method']}={v['statistic']:.4g} "
            f"(threshold {v['threshold']:.4g}), window {v['window_size']}, features {feats}, episode {v['episode_id']}"
        )
    if t == TRAINING_REQUESTED:
        return (
            f"training of {v['model_name']} requested by {v['requested_by']} ({v['reason']}), request {v['request_id']}"
        )
    if t == MODELS_TRAINED:
        champ = v.get("champion_metrics") or {}
        metric = next(iter(sorted(v["metrics"])), "")
        vs = f" vs champion v{v['champion_version']} {champ.get(metric, float('nan')):.4f}" if champ else ""
        return (
            f"run {v['run_id']} trained {v['model_name']} on {v['n_train']} examples in {v['duration_s']:.1f}s: "
            + ", ".join(f"{k}={x:.4f}" for k, x in sorted(v["metrics"].items()))
            + vs
        )
    if t == TRAINING_FAILED:
        return f"training of {v['model_name']} failed ({v['error_type']}): {v['reason']}"
    if t == MODELS_COMPARED:
        if v.get("mode") == "canary":
            return (
                f"{v['model_name']} canary v{v['challenger_version']} (share {v.get('traffic_fraction') or 0:g}) vs "
                f"champion v{v['champion_version']}: {v['verdict']}, accuracy {v['challenger_accuracy']:.4f} on "
                f"{v.get('challenger_labelled')} labelled events vs {v['champion_accuracy']:.4f} on "
                f"{v.get('champion_labelled')}, {v['confidence']:.0%} interval of the difference "
                f"[{v['interval_low']:+.4f}, {v['interval_high']:+.4f}]"
            )
        return (
            f"{v['model_name']} challenger v{v['challenger_version']} vs champion v{v['champion_version']}: "
            f"{v['verdict']} on {v['labelled_pairs']} labelled events, accuracy {v['challenger_accuracy']:.4f} vs "
            f"{v['champion_accuracy']:.4f}, {v['confidence']:.0%} interval of the difference "
            f"[{v['interval_low']:+.4f}, {v['interval_high']:+.4f}]"
        )
    if t == MODELS_PROMOTED:
        prev = f" (was v{v['previous_version']})" if v.get("previous_version") else ""
        done = _DONE.get(v["action"], f"{v['action']}d")
        return f"{v['model_name']} v{v['version']} {done} by {v['actor']}{prev}: {v['reason']}"
    if t == MODELS_REJECTED:
        return f"{v['model_name']} v{v['version']} rejected: {v['reason']}"
    if t == DEPLOYMENTS_STATUS:
        secs = f" in {v['load_seconds']:.2f}s" if v.get("load_seconds") is not None else ""
        return (
            f"{v['model_name']} v{v['version']} {v['status']} as {v['slot']} on {v['instance_id']}{secs}: {v['reason']}"
        )
    return str({k: x for k, x in v.items() if k not in ("event_id", "correlation_id", "causation_id")})[:200]


@dataclass
class TopicStatus:
    name: str
    partitions: int
    records: int  # end offset sum (records ever written, minus nothing: offsets are monotonic)
    lag: dict[str, int]  # consumer group → total lag


async def topic_status(stack: StackSettings) -> list[TopicStatus]:
    """Every catalog topic with its end offsets and the lag of each consumer group reading it."""
    admin = AIOKafkaAdminClient(**stack.kafka.client_kwargs())
    consumer = AIOKafkaConsumer(**stack.kafka.client_kwargs(), group_id=None)
    await admin.start()
    await consumer.start()
    try:
        names = [stack.topic_prefix + t.name for t in default_catalog()]
        all_tps = await partitions_of(stack.kafka, names)
        tps: dict[str, list[TopicPartition]] = {n: [tp for tp in all_tps if tp.topic == n] for n in names}
        end = await consumer.end_offsets(all_tps) if all_tps else {}
        groups: list[Any] = await admin.list_consumer_groups()
        lag: dict[str, dict[str, int]] = {n: {} for n in names}
        for g in groups:
            group_id = g[0] if isinstance(g, tuple) else g.group_id
            if stack.topic_prefix and not str(group_id).startswith(stack.topic_prefix):
                continue
            offsets = await admin.list_consumer_group_offsets(group_id)
            for tp, meta in offsets.items():
                if tp.topic in lag and meta.offset >= 0:
                    lag[tp.topic][group_id] = lag[tp.topic].get(group_id, 0) + max(0, end.get(tp, 0) - meta.offset)
        return [
            TopicStatus(
                name=n[len(stack.topic_prefix) :],
                partitions=len(tps[n]),
                records=sum(end.get(tp, 0) for tp in tps[n]),
                lag=lag[n],
            )
            for n in names
        ]
    finally:
        await consumer.stop()
        await admin.close()
