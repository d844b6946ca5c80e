"""``driftline up / down / status`` and ``driftline stack init``: the local stack."""

from __future__ import annotations

import typer
from rich.table import Table

from driftline.cli._common import console, fail, run, run_stack_script, stack_settings

stack_app = typer.Typer(help="Local stack chores (topics, schemas, bucket).", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.command("up", help="Start the local stack (Kafka, schema registry, PostgreSQL, MinIO) and initialise it.")(up)
    app.command("down", help="Stop the local stack; leaves no process behind.")(down)
    app.command("status", help="Show each component of the local stack.")(status)
    app.add_typer(stack_app, name="stack")


def up() -> None:
    rc = run_stack_script("up")
    if rc != 0:
        raise fail("the stack did not start (see the messages above)", rc)
    init()


def down() -> None:
    raise typer.Exit(run_stack_script("down"))


def status() -> None:
    raise typer.Exit(run_stack_script("status"))


@stack_app.command("init")
def init() -> None:
    """Create missing topics from the catalog, register every schema (BACKWARD), create the bucket."""
    from driftline.stack import init_stack

    report = run(init_stack(stack_settings()))
    table = Table(title="stack initialised", show_header=True)
    table.add_column("subject")
    table.add_column("schema id", justify="right")
    for subject, schema_id in report.schemas.items():
        table.add_row(subject, str(schema_id))
    console.print(table)
    created = ", ".join(report.topics_created) or "none (all existed)"
    console.print(f"topics created: {created}")
    console.print(f"artifact bucket: {report.bucket}")
