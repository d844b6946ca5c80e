"""``driftline up / down / status`` and ``driftline stack init``: the local stack."""

from __future__ import annotations

from collections.abc import Callable

import typer
from rich.table import Table

from driftline_cli._common import console, fail, run, run_services_script, run_stack_script, stack_settings

stack_app = typer.Typer(help="Local stack chores (topics, schemas, bucket).", no_args_is_help=True)
services_app = typer.Typer(
    help="The six services as one process set under honcho, against the local stack.", no_args_is_help=True
)


def register(app: typer.Typer) -> None:
    app.command("up", help="Start the local stack (Kafka, schema registry, PostgreSQL, MinIO) and initialise it.")(up)
    app.command("down", help="Stop the six services (if running) and the local stack; leaves no process behind.")(down)
    app.command("status", help="Show each component of the local stack.")(status)
    app.add_typer(stack_app, name="stack")
    app.add_typer(services_app, name="services")


def up() -> None:
    rc = run_stack_script("up")
    if rc != 0:
        raise fail("the stack did not start (see the messages above)", rc)
    init()


def down() -> None:
    services_rc = run_services_script("stop")
    raise typer.Exit(run_stack_script("down") or services_rc)


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


def _services_command(action: str) -> Callable[[], None]:
    def command() -> None:
        raise typer.Exit(run_services_script(action))

    return command


# driftline services <name> → infra/services.sh <action>
for _name, _action, _help in (
    ("up", "start", "Start the six services in the background and wait until each answers /readyz."),
    ("down", "stop", "Stop the six services (SIGTERM: each drains, commits and exits)."),
    ("status", "status", "Each service's readiness and address."),
    ("logs", "logs", "Follow the services' collected logs (Ctrl-C to stop)."),
):
    services_app.command(_name, help=_help)(_services_command(_action))
