"""The ``driftline`` command line. Each command group lives in its own module of this package."""

from __future__ import annotations

import typer

from driftline_cli import demo, dlq, inspect, models, projects, publish, runs, stack

app = typer.Typer(
    name="driftline",
    help="Driftline: event-driven MLOps. Run the local stack, publish events, inspect topics and models.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_show_locals=False,
    pretty_exceptions_short=True,
)

stack.register(app)
publish.register(app)
dlq.register(app)
inspect.register(app)
models.register(app)
runs.register(app)
projects.register(app)
demo.register(app)


if __name__ == "__main__":  # pragma: no cover
    app()
