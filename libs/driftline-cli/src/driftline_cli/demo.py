"""``driftline demo``: the closed loop on the local stack, in a fresh isolated slice of it."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import typer
from rich.table import Table

from driftline_cli._common import console, run, run_services_script, stack_script, stack_settings


def register(app: typer.Typer) -> None:
    app.command(
        "demo", help="Run the closed loop: stream, train, drift, retrain, promote, redeploy; print the timeline."
    )(demo)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def demo(
    seed: int = typer.Option(7, help="Seed of the workload."),
    scale: float = typer.Option(1.0, help="Multiply every phase's number of events (0.5 = quicker, noisier)."),
    rate: float = typer.Option(300.0, help="Events per second sent to ingestion."),
    keep_services: bool = typer.Option(True, help="Leave the six services running afterwards."),
) -> None:
    """Each run gets its own topics (prefix), database and bucket, so runs never mix."""
    from driftline.history import CHAIN_TOPICS, chain, describe, read_topics
    from driftline.stack import init_isolated
    from driftline_cli.examples.loan_approval.scenario import Scenario, ScenarioConfig

    base = stack_settings()
    name = f"demo-{time.strftime('%m%d-%H%M%S')}"
    console.rule(f"[bold]Driftline demo[/bold] — run {name}")
    stack = run(init_isolated(base, name))
    state_dir = Path(os.environ.get("DRIFTLINE_STATE_DIR") or stack_script().parents[1] / ".state" / "dev")
    env_file = state_dir / "demo.env"
    env_file.write_text(
        f"DRIFTLINE_TOPIC_PREFIX={stack.topic_prefix}\n"
        f"DRIFTLINE_POSTGRES_DSN={stack.postgres_dsn.get_secret_value()}\n"
        f"DRIFTLINE_ARTIFACT_BUCKET={stack.artifact_bucket}\n"
    )
    run_services_script("stop")
    if run_services_script("start", extra_env_file=env_file) != 0:
        raise typer.Exit(1)

    cfg = ScenarioConfig(
        seed=seed,
        rate=rate,
        warmup=int(1200 * scale),
        before_drift=int(1500 * scale),
        after_drift_max=int(6000 * scale),
        after_new_model=int(1000 * scale),
    )
    summary = run(Scenario(stack, cfg, say=console.print).run())

    table = Table(title="closed loop", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("loop closed", "[green]yes[/green]" if summary.closed else f"[red]no[/red] — {summary.reason}")
    table.add_row("first model", f"v{summary.first_version}")
    table.add_row("accuracy before drift", f"{_pct(summary.accuracy_before_drift)} ({summary.n_before} events)")
    table.add_row("accuracy after drift", f"{_pct(summary.accuracy_after_drift)} ({summary.n_after} events)")
    table.add_row("accuracy with the new model", f"{_pct(summary.accuracy_new_model)} ({summary.n_new} events)")
    table.add_row("drift detected", f"{summary.drift_kind} / {summary.drift_method}")
    table.add_row("events from onset to drift.detected", str(summary.events_to_detection))
    table.add_row(
        "drift.detected → new version serving",
        "n/a" if summary.drift_to_serving_s is None else f"{summary.drift_to_serving_s:.1f} s",
    )
    table.add_row("new model", f"v{summary.new_version}")
    table.add_row(
        "episodes / runs to recover / runs in the episode",
        f"{summary.episodes} / {summary.runs_to_recover} / {summary.runs_after_drift}",
    )
    table.add_row(
        "the episode's attempts",
        ", ".join(f"#{a['attempt']} {a['reason']}: {a['outcome']}" for a in summary.attempts) or "-",
    )
    table.add_row("episode correlation id", str(summary.correlation_id))
    console.print(table)

    if summary.correlation_id:
        events = chain(run(read_topics(stack, CHAIN_TOPICS)), summary.correlation_id)
        console.rule("trace (read back from the topics)")
        for e in events:
            console.print(f"  {e.value['produced_at']:%H:%M:%S.%f}"[:-3] + f"  {e.topic:<19} {describe(e)}")
        again = f"DRIFTLINE_TOPIC_PREFIX={stack.topic_prefix} .venv/bin/driftline trace {summary.correlation_id}"
        console.print(f"\nagain later: {again}")
    out = state_dir / f"{name}-summary.json"
    out.write_text(json.dumps(summary.as_dict(), indent=2, default=str))
    console.print(f"summary written to {out}")
    if not keep_services:
        run_services_script("stop")
    else:
        console.print("the services keep running: `make services-down` stops them, `make down` stops everything")
    if not summary.closed:
        raise typer.Exit(1)
