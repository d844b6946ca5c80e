"""``driftline dlq list`` and ``driftline dlq replay``: triage and replay the dead-letter topic.

``list`` prints the records of events.dlq (newest last): when, where from, the error class and
the reason. ``replay`` sends refused records again:

* refused by ingestion, the SDK or the CLI (source ``http:/v1/events``, ``sdk-kafka:labels``…):
  the original JSON is validated again with the current project and schemas, and what passes now is
  published (straight to Kafka, source ``dlq-replay``); what still fails is only reported. Events
  that had no ``event_id`` get one derived from the DLQ record, so replaying twice does not
  publish twice;
* refused by a consumer (source ``consumer:<group>``): the original bytes go back to their original
  topic with their original key, after the consumer was fixed; its sinks are idempotent;
* refused by a follower (source ``follower:<name>``, an undecodable record of a control topic that
  every copy replays): skipped, since resending it would make every copy apply it again later.

``--error-type`` takes one or more error types (repeat it, or separate them with commas) and the
family ``validation``: every error type of :mod:`driftline.validation`, which is what ingestion,
the SDK and the CLI refuse client input with (``wrong_type``, ``unknown_field``…).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

import typer
from aiokafka import AIOKafkaConsumer, TopicPartition
from rich.table import Table

from driftline.catalog import EVENTS_DLQ, EVENTS_RAW, LABELS
from driftline.events import derived_event_id
from driftline.kafka import partitions_of
from driftline.producer import EventProducer
from driftline.project import project_from_settings
from driftline.serde import AvroSerde, DecodeError, SchemaRegistryClient
from driftline.settings import StackSettings
from driftline.validation import (
    ERROR_TYPES,
    Kind,
    Rejection,
    Valid,
    Validator,
    parse_body,
)
from driftline_cli._common import console, err_console, fail, run, stack_settings

dlq_app = typer.Typer(help="Inspect and replay the dead-letter topic (events.dlq).", no_args_is_help=True)
REPLAY_SOURCE = "dlq-replay"

# Names an operator can give to --error-type for a set of error types.
ERROR_FAMILIES: dict[str, frozenset[str]] = {
    # What ingestion (source http:/v1/<kind>), the SDK and the CLI refuse client input with.
    "validation": ERROR_TYPES,
}
ERROR_TYPE_HELP = (
    "Only these error types: repeat the option or separate them with commas; "
    f"{', '.join(sorted(ERROR_FAMILIES))} means every error type client input is refused with."
)


def error_types(values: list[str] | None) -> frozenset[str] | None:
    """The error types ``--error-type`` selects (None: every one): comma-separated, families expanded."""
    if not values:
        return None
    names = {name.strip() for value in values for name in value.split(",") if name.strip()}
    out: set[str] = set()
    for name in names:
        out |= ERROR_FAMILIES.get(name, {name})
    return frozenset(out) or None


def register(app: typer.Typer) -> None:
    app.add_typer(dlq_app, name="dlq")


@dataclass
class DeadLetter:
    offset: int
    value: dict[str, Any]

    @property
    def source(self) -> str:
        return str(self.value["source"])

    @property
    def from_consumer(self) -> bool:
        return self.source.startswith("consumer:")

    @property
    def from_follower(self) -> bool:
        return self.source.startswith("follower:")

    def matches(self, source: str | None, types: frozenset[str] | None) -> bool:
        return (source is None or self.source.startswith(source)) and (
            types is None or str(self.value["error_type"]) in types
        )


def nothing_matched_hint(records: list[DeadLetter]) -> str:
    """What events.dlq holds, when a filter matched none of it: the sources and error types to pick from."""
    sources = Counter(d.source for d in records)
    types = Counter(str(d.value["error_type"]) for d in records)
    return (
        "no record matches; events.dlq holds sources "
        + ", ".join(f"{k}={n}" for k, n in sources.most_common())
        + " and error types "
        + ", ".join(f"{k}={n}" for k, n in types.most_common())
    )


async def read_dlq(stack: StackSettings, *, timeout_s: float = 60.0) -> tuple[list[DeadLetter], int]:
    """Every record of events.dlq up to its current end (and how many could not be decoded)."""
    registry = SchemaRegistryClient.from_settings(stack)
    serde = AvroSerde(registry, topic_prefix=stack.topic_prefix)
    consumer = AIOKafkaConsumer(**stack.kafka.client_kwargs(), group_id=None, enable_auto_commit=False)
    topic = stack.topic_prefix + EVENTS_DLQ
    out: list[DeadLetter] = []
    undecodable = 0
    try:
        await asyncio.wait_for(consumer.start(), timeout_s)
        tps = await partitions_of(stack.kafka, [topic])
        if not tps:
            return [], 0
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        while True:
            positions = [await consumer.position(tp) for tp in tps]
            if all(pos >= ends[tp] for pos, tp in zip(positions, tps, strict=True)):
                break
            batch = await consumer.getmany(timeout_ms=1000)
            for records in batch.values():
                for rec in records:
                    if rec.offset >= ends[TopicPartition(rec.topic, rec.partition)]:
                        continue
                    try:
                        value, _ = await serde.decode(rec.value, EVENTS_DLQ)
                    except DecodeError:
                        undecodable += 1
                        continue
                    out.append(DeadLetter(rec.offset, value))
    finally:
        await consumer.stop()
        await registry.close()
    out.sort(key=lambda d: d.offset)
    return out, undecodable


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if isinstance(value, datetime) else str(value)


@dlq_app.command("list")
def list_records(
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="Show the last N matching records.")] = 20,
    source: Annotated[
        str | None, typer.Option("--source", help="Only sources starting with this (http, consumer:features…).")
    ] = None,
    error_type: Annotated[list[str] | None, typer.Option("--error-type", help=ERROR_TYPE_HELP)] = None,
) -> None:
    """List the dead-letter records: time, source, error class, reason."""
    records, undecodable = run(read_dlq(stack_settings()))
    matching = [d for d in records if d.matches(source, error_types(error_type))]
    shown = matching[-limit:]
    table = Table(title=f"events.dlq: {len(shown)} of {len(matching)} matching ({len(records)} in total)")
    for col in ("offset", "time", "source", "error", "reason", "original"):
        table.add_column(col, overflow="fold")
    for d in shown:
        v = d.value
        where = (
            f"{v['original_topic']}[{v['original_partition']}]@{v['original_offset']}"
            if v.get("original_topic")
            else f"{len(v['original'])} bytes"
        )
        table.add_row(str(d.offset), _when(v["event_time"]), d.source, v["error_type"], v["reason"][:300], where)
    console.print(table)
    counts = Counter(d.value["error_type"] for d in matching)
    if counts:
        console.print("by error: " + ", ".join(f"{k}={n}" for k, n in counts.most_common()), highlight=False)
    elif records:
        console.print(nothing_matched_hint(records), highlight=False)
    if undecodable:
        err_console.print(f"[yellow]{undecodable} record(s) of events.dlq could not be decoded[/yellow]")


@dataclass
class Outcome:
    offset: int
    source: str
    error_type: str
    action: str  # replayed | still_invalid | resent | skipped
    detail: str
    records: int = 0


def plan_replay(d: DeadLetter, validator: Validator) -> tuple[list[Valid], list[Rejection] | str]:
    """What a refused-by-ingestion record becomes now: records that pass, and what still fails."""
    kind: Kind = "labels" if d.source.endswith("labels") else "events"
    items = parse_body(bytes(d.value["original"]), kind, max_batch=1_000_000)
    if isinstance(items, Rejection):
        return [], items.reason
    dlq_id = str(d.value["event_id"])
    if kind == "events":  # ids of events that had none: stable across replays
        items = [
            {**item, "event_id": derived_event_id(REPLAY_SOURCE, dlq_id, i)}
            if isinstance(item, dict) and item.get("event_id") is None
            else item
            for i, item in enumerate(items)
        ]
    return validator.validate(kind, items, producer=REPLAY_SOURCE, source=REPLAY_SOURCE)


async def replay_dlq(
    stack: StackSettings, *, source: str | None, types: frozenset[str] | None, dry_run: bool, limit: int | None
) -> tuple[list[Outcome], int, str | None]:
    """What replaying the matching records did (or would do), how many records were undecodable, and
    when nothing matched, what events.dlq holds instead."""
    records, undecodable = await read_dlq(stack)
    matching = [d for d in records if d.matches(source, types)]
    hint = nothing_matched_hint(records) if records and not matching else None
    if limit is not None:
        matching = matching[:limit]
    validator = Validator.from_project(project_from_settings(stack))
    registry = SchemaRegistryClient.from_settings(stack)
    serde = AvroSerde(registry, topic_prefix=stack.topic_prefix)
    producer = EventProducer(stack.kafka, serde, REPLAY_SOURCE)
    outcomes: list[Outcome] = []
    futures: list[asyncio.Future[Any]] = []
    try:
        if not dry_run and matching:
            await asyncio.wait_for(producer.start([EVENTS_RAW, LABELS]), 60)
        for d in matching:
            v = d.value
            base = (d.offset, d.source, str(v["error_type"]))
            if d.from_follower:
                detail = "refused by a follower of a control topic: not resent (every copy replays it)"
                outcomes.append(Outcome(*base, "skipped", detail))
                continue
            if d.from_consumer:
                physical = v.get("original_topic")
                if not physical or not str(physical).startswith(stack.topic_prefix):
                    outcomes.append(
                        Outcome(*base, "skipped", f"original topic {physical!r} is not one of this stack's")
                    )
                    continue
                logical = str(physical)[len(stack.topic_prefix) :]
                if not dry_run:
                    futures.append(await producer.send_raw(logical, bytes(v["original"]), key=v.get("original_key")))
                outcomes.append(Outcome(*base, "resent", f"original bytes to {logical}", 1))
                continue
            valid, rejected = plan_replay(d, validator)
            if isinstance(rejected, str):
                outcomes.append(Outcome(*base, "still_invalid", rejected))
                continue
            if not dry_run:
                futures += [await producer.send(r.topic, r.record, key=r.key) for r in valid]
            detail = f"{len(valid)} record(s) pass now"
            if rejected:
                detail += f"; {len(rejected)} still refused: {rejected[0].reason[:200]}"
            outcomes.append(Outcome(*base, "replayed" if valid else "still_invalid", detail, len(valid)))
        if futures:
            await asyncio.gather(*futures)  # acknowledged (acks=all) before we say so
    finally:
        await producer.stop()
        await registry.close()
    return outcomes, undecodable, hint


@dlq_app.command("replay")
def replay(
    error_type: Annotated[list[str] | None, typer.Option("--error-type", help=ERROR_TYPE_HELP)] = None,
    source: Annotated[str | None, typer.Option("--source", help="Only sources starting with this.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate and report; publish nothing.")] = False,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="At most N DLQ records (oldest first).")] = None,
) -> None:
    """Re-validate and republish refused input that passes now; resend consumer-refused records."""
    try:
        outcomes, undecodable, hint = run(
            replay_dlq(stack_settings(), source=source, types=error_types(error_type), dry_run=dry_run, limit=limit)
        )
    except (TimeoutError, OSError) as exc:
        raise fail(f"cannot reach the stack: {exc!r}", 2) from exc
    table = Table(title=f"dlq replay{' (dry run: nothing published)' if dry_run else ''}")
    for col in ("offset", "source", "error", "action", "records", "detail"):
        table.add_column(col, overflow="fold")
    for o in outcomes:
        table.add_row(str(o.offset), o.source, o.error_type, o.action, str(o.records), o.detail)
    console.print(table)
    counts = Counter(o.action for o in outcomes)
    published = sum(o.records for o in outcomes if o.action in ("replayed", "resent"))
    console.print(
        f"replayed={counts['replayed']} resent={counts['resent']} still_invalid={counts['still_invalid']} "
        f"skipped={counts['skipped']} {'would_publish' if dry_run else 'published'}={published}",
        highlight=False,
    )
    if hint:
        console.print(hint, highlight=False)
    if undecodable:
        err_console.print(f"[yellow]{undecodable} record(s) of events.dlq could not be decoded[/yellow]")
