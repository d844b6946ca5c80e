"""``driftline publish FILE``: publish events (or labels) from a JSON Lines or CSV file.

Rows of a JSON Lines file are whole events (``{"type": ..., "payload": {...}}``) or bare payloads
(wrapped with ``--type``, default the project's event type); rows of a CSV file are payloads, one
column per field (values converted to the fields' types), with optional ``event_id``,
``event_time`` and ``correlation_id`` columns. With ``--labels`` rows are labels
(``event_id``, ``entity_id``, ``label``, optionally ``project``).

A row without an ``event_id`` gets one derived from the file name, the line number and the line,
so publishing the same file again is recognised as a retry (``--fresh-ids`` to turn that off).
The exit code is 1 when a row was refused (each refused row is also in events.dlq), 2 when the
file could not be published; when publishing stops mid-file, the summary of what was stored until
then is printed first.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from driftline.events import derived_event_id
from driftline.settings import LOCAL_API_TOKEN
from driftline.validation import Kind, PayloadSchema
from driftline_cli._common import console, err_console, fail, run, stack_settings
from driftline_sdk import DEFAULT_URL, Publisher, PublishError, PublishResult

ENVELOPE_COLUMNS = ("event_id", "event_time", "correlation_id")


class FileFormat(StrEnum):
    jsonl = "jsonl"
    csv = "csv"


def register(app: typer.Typer) -> None:
    app.command("publish", help="Publish events (or labels) from a JSON Lines or CSV file, with a summary.")(publish)


@dataclass
class Row:
    line: int
    item: Any = None
    unparseable: bytes | None = None
    reason: str = ""


@dataclass
class Summary:
    result: PublishResult = field(default_factory=PublishResult)
    lines: list[int] = field(default_factory=list)  # line of each published row, by index
    rows: int = 0


class Stopped(Exception):
    """Publishing gave up mid-file; ``summary`` is what was done until then."""

    def __init__(self, error: PublishError, summary: Summary, first_line: int | None) -> None:
        super().__init__(str(error))
        self.error = error
        self.summary = summary
        self.first_line = first_line  # first line of the batch that failed


def _fmt(path: Path, forced: FileFormat | None) -> FileFormat:
    if forced is not None:
        return forced
    return FileFormat.csv if path.suffix.lower() in (".csv", ".tsv") else FileFormat.jsonl


class RowReader:
    """Turns the file's rows into the items the API takes, given what the service says can be sent."""

    def __init__(self, path: Path, fmt: FileFormat, labels: bool, event_type: str | None, schemas: dict[str, Any]):
        self.path = path
        self.fmt = fmt
        self.labels = labels
        types = {t["type"]: t for t in schemas.get("events", [])}
        if not labels and event_type is None and len(types) == 1:
            event_type = next(iter(types))
        if not labels and event_type is not None and event_type not in types:
            known = ", ".join(sorted(types)) or "none"
            raise fail(f"event type {event_type!r} is not known to the service (known: {known})", 2)
        self.event_type = event_type
        spec = types.get(event_type or "")
        self.payload_schema = PayloadSchema(spec["avro"]) if spec else None

    def count(self) -> int:
        with self.path.open("rb") as f:
            lines = sum(1 for line in f if line.strip())
        return max(0, lines - 1) if self.fmt is FileFormat.csv else lines

    def rows(self) -> Iterator[Row]:
        if self.fmt is FileFormat.csv:
            yield from self._csv_rows()
            return
        with self.path.open("rb") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    value = orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    yield Row(number, unparseable=line.rstrip(b"\r\n"), reason=f"line {number} is not JSON: {exc}")
                    continue
                yield Row(number, self._item(value))

    def _csv_rows(self) -> Iterator[Row]:
        with self.path.open(newline="", encoding="utf-8") as f:
            dialect = csv.excel_tab if self.path.suffix.lower() == ".tsv" else csv.excel
            reader = csv.DictReader(f, dialect=dialect)
            for row in reader:
                if None in row:  # more cells than header columns
                    raw = _csv_line(row)
                    reason = f"line {reader.line_num} has more cells than the header has columns"
                    yield Row(reader.line_num, unparseable=raw, reason=reason)
                    continue
                cells = {k: v for k, v in row.items() if k is not None}
                if self.labels:
                    yield Row(reader.line_num, {k: v for k, v in cells.items() if v not in (None, "")})
                    continue
                envelope = {k: cells.pop(k) for k in ENVELOPE_COLUMNS if k in cells and not self._is_field(k)}
                payload = self.payload_schema.coerce_strings(cells) if self.payload_schema else cells
                item = {"type": self.event_type, **{k: v for k, v in envelope.items() if v}, "payload": payload}
                yield Row(reader.line_num, item)

    def _is_field(self, name: str) -> bool:
        return self.payload_schema is not None and name in self.payload_schema.fields

    def _item(self, value: Any) -> Any:
        if self.labels or not isinstance(value, dict):
            return value
        if "payload" in value:  # a whole event
            return value if "type" in value or self.event_type is None else {"type": self.event_type, **value}
        envelope = {k: value.pop(k) for k in ENVELOPE_COLUMNS if k in value and not self._is_field(k)}
        return {"type": self.event_type, **envelope, "payload": value}


def _csv_line(row: dict[str | None, Any]) -> bytes:
    out = io.StringIO()
    cells = [v for k, v in row.items() if k is not None]
    extra = row.get(None) or []
    csv.writer(out).writerow([*cells, *extra])
    return out.getvalue().rstrip("\r\n").encode()


def _with_stable_id(row: Row, path: Path, labels: bool) -> None:
    """Give an event without id one derived from the file and the line: publishing again is a retry."""
    item = row.item
    if labels or not isinstance(item, dict) or item.get("event_id") is not None:
        return
    digest = hashlib.sha256(orjson.dumps(item, default=str, option=orjson.OPT_SORT_KEYS)).hexdigest()
    row.item = {**item, "event_id": derived_event_id("cli", path.name, row.line, digest)}


async def _publish(
    path: Path,
    fmt: FileFormat,
    *,
    labels: bool,
    event_type: str | None,
    publisher: Publisher,
    fresh_ids: bool,
    show_progress: bool,
) -> Summary:
    summary = Summary()
    async with publisher:
        reader = RowReader(path, fmt, labels, event_type, await publisher.schemas())
        total = reader.count()
        chunk_rows = publisher.batch_size * publisher.concurrency
        progress = Progress(
            TextColumn("[bold]publishing[/bold] {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err_console,
            disable=not show_progress,
        )
        with progress:
            task = progress.add_task(path.name, total=total)

            def advance(n: int) -> None:
                progress.advance(task, n)

            chunk: list[Row] = []

            async def flush() -> None:
                items = [r for r in chunk if r.unparseable is None]
                kind: Kind = "labels" if labels else "events"
                try:
                    if items:
                        if kind == "labels":
                            part = await publisher.publish_labels([r.item for r in items], on_progress=advance)
                        else:
                            part = await publisher.publish([r.item for r in items], on_progress=advance)
                        _add(summary, part, [r.line for r in items])
                        items = []
                    for r in chunk:
                        if r.unparseable is not None:
                            part = await publisher.reject_unparseable(r.unparseable, r.reason, kind=kind)
                            _add(summary, part, [r.line])
                            advance(1)
                except PublishError as exc:
                    if items and exc.partial is not None:  # what the other batches of this chunk stored
                        _add(summary, exc.partial, [r.line for r in items])
                    raise Stopped(exc, summary, chunk[0].line if chunk else None) from exc
                chunk.clear()

            for row in reader.rows():
                summary.rows += 1
                if not fresh_ids:
                    _with_stable_id(row, path, labels)
                chunk.append(row)
                if len(chunk) >= chunk_rows:
                    await flush()
            await flush()
    return summary


def _add(summary: Summary, part: PublishResult, lines: list[int]) -> None:
    offset = len(summary.lines)
    summary.lines += lines
    for error in part.errors:
        error["index"] = error["index"] + offset  # indexes of this call → indexes of the whole file
    summary.result.add(part)


def _report(summary: Summary, show_errors: int) -> None:
    r = summary.result
    table = Table(title="publish summary", show_header=True)
    for col in ("rows", "accepted", "duplicates", "rejected", "dead-lettered"):
        table.add_column(col, justify="right")
    table.add_row(str(summary.rows), str(r.accepted), str(r.duplicates), str(r.rejected), str(r.dead_lettered))
    console.print(table)
    console.print(
        f"accepted={r.accepted} duplicates={r.duplicates} rejected={r.rejected} dead_lettered={r.dead_lettered}",
        highlight=False,
    )
    if r.errors and show_errors > 0:
        errors = Table(title=f"refused rows (first {min(show_errors, len(r.errors))} of {len(r.errors)} problems)")
        for col in ("line", "field", "error", "reason"):
            errors.add_column(col)
        for e in r.errors[:show_errors]:
            line = summary.lines[e["index"]] if 0 <= e["index"] < len(summary.lines) else "?"
            errors.add_row(str(line), str(e.get("field") or "-"), str(e["error_type"]), str(e["reason"]))
        console.print(errors)


def publish(
    file: Annotated[
        Path,
        typer.Argument(exists=True, dir_okay=False, readable=True, help="JSON Lines (.jsonl, .ndjson) or CSV file."),
    ],
    event_type: Annotated[
        str | None,
        typer.Option("--type", "-t", help="Event type of rows that are bare payloads (default: the project's)."),
    ] = None,
    labels: Annotated[bool, typer.Option("--labels", help="The rows are labels, sent to POST /v1/labels.")] = False,
    url: Annotated[
        str, typer.Option("--url", envvar="DRIFTLINE_INGESTION_URL", help="Ingestion service to publish through.")
    ] = DEFAULT_URL,
    kafka: Annotated[
        bool, typer.Option("--kafka", help="Publish straight to Kafka (same validation) instead of over HTTP.")
    ] = False,
    token: Annotated[
        str | None,
        typer.Option("--token", envvar="DRIFTLINE_API_TOKEN", help="API token (default: the local-mode token)."),
    ] = None,
    file_format: Annotated[
        FileFormat | None, typer.Option("--format", help="File format (default: from the extension).")
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Records per request.")] = 500,
    fresh_ids: Annotated[
        bool, typer.Option("--fresh-ids", help="Random ids for rows without one (publishing again duplicates).")
    ] = False,
    show_errors: Annotated[int, typer.Option("--show-errors", min=0, help="Refused rows to list.")] = 20,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bar.")] = False,
) -> None:
    fmt = _fmt(file, file_format)
    if kafka:
        publisher = Publisher.kafka(stack_settings(), source="cli-kafka", batch_size=max(batch_size, 1000))
    else:
        publisher = Publisher.http(url, token or LOCAL_API_TOKEN, source="cli", batch_size=batch_size)
    try:
        summary = run(
            _publish(
                file,
                fmt,
                labels=labels,
                event_type=event_type,
                publisher=publisher,
                fresh_ids=fresh_ids,
                show_progress=not no_progress,
            )
        )
    except Stopped as exc:  # what was done until then, then why it stopped
        _report(exc.summary, show_errors)
        where = f" at the batch from line {exc.first_line}" if exc.first_line is not None else ""
        again = (
            "publishing the file again sends new copies (--fresh-ids)"
            if fresh_ids
            else "publishing the file again is safe (rows keep their ids: stored ones come back as duplicates)"
        )
        console.print(
            f"publishing stopped{where}: the counts above are what was stored until then; {again}", highlight=False
        )
        raise fail(str(exc.error), 2) from exc
    except PublishError as exc:
        raise fail(str(exc), 2) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise fail(f"cannot publish {file}: {exc}", 2) from exc
    _report(summary, show_errors)
    if summary.result.rejected:
        raise typer.Exit(1)
