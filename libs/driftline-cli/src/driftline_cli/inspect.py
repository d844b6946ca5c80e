"""``driftline topics`` and ``driftline trace``: what is in Kafka, read from Kafka."""

from __future__ import annotations

from datetime import datetime

import typer
from rich.table import Table

from driftline_cli._common import console, fail, run, stack_settings


def register(app: typer.Typer) -> None:
    app.command("topics", help="List Driftline's topics with their record counts and each consumer group's lag.")(
        topics
    )
    app.command("trace", help="Print the causal chain of a correlation id, read from the topics alone.")(trace)


def topics() -> None:
    from driftline.history import topic_status

    rows = run(topic_status(stack_settings()))
    table = Table(show_header=True, header_style="bold")
    table.add_column("topic")
    table.add_column("partitions", justify="right")
    table.add_column("records", justify="right")
    table.add_column("consumer group lag")
    for r in rows:
        lag = ", ".join(f"{g}={n}" for g, n in sorted(r.lag.items())) or "-"
        table.add_row(r.name, str(r.partitions), str(r.records), lag)
    console.print(table)


def _clock(value: object) -> str:
    return value.strftime("%H:%M:%S.%f")[:-3] if isinstance(value, datetime) else str(value)


def trace(
    correlation_id: str = typer.Argument(
        ..., help="Correlation id (a drift episode's drift event id, or a request's)."
    ),
    json_output: bool = typer.Option(False, "--json", help="Print the events as JSON lines."),
) -> None:
    """Drift → training request → run → model version → promotion → deployment, with times."""
    import json

    from driftline.history import CHAIN_TOPICS, chain, describe, read_topics

    events = chain(run(read_topics(stack_settings(), CHAIN_TOPICS)), correlation_id)
    if not events:
        raise fail(f"no event with correlation id {correlation_id} in {', '.join(CHAIN_TOPICS)}")
    if json_output:
        for e in events:
            console.print_json(json.dumps({"topic": e.topic, **e.value}, default=str))
        return
    start = events[0].value["produced_at"]
    table = Table(title=f"correlation {correlation_id}", show_header=True, header_style="bold")
    table.add_column("time (UTC)")
    table.add_column("+s", justify="right")
    table.add_column("topic")
    table.add_column("what happened")
    for e in events:
        at = e.value["produced_at"]
        table.add_row(_clock(at), f"{(at - start).total_seconds():.1f}", e.topic, describe(e))
    console.print(table)
    seen = {e.topic for e in events}
    # A chain starts at a drift event or at a request (API, CLI, ops); only a drift-started chain
    # lacks something when it has no drift event.
    steps = ["training.requested", "models.trained", "models.promoted", "deployments.status"]
    if events[0].topic == "drift.detected":
        steps.insert(0, "drift.detected")
    missing = [t for t in steps if t not in seen]
    if missing and "models.rejected" not in seen and "training.failed" not in seen:
        console.print(f"[yellow]chain incomplete so far: no {', '.join(missing)}[/yellow]")
