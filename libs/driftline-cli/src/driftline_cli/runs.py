"""``driftline runs …``: training runs, and re-running one to prove its model can be rebuilt."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

import httpx
import typer
from rich.table import Table

from driftline.artifacts import ArtifactIntegrityError, ArtifactNotFound, ArtifactStore
from driftline_cli._common import console, fail, stack_settings
from driftline_cli.models import DEFAULT_TRAINING_URL, TrainingUrl

runs_app = typer.Typer(
    help="Training runs: re-run a recorded run in this environment and compare it with its model.",
    no_args_is_help=True,
)

# Exit codes of `runs reproduce`, for scripts and CI.
EXIT_DIFFERENT = 1  # the re-fitted model predicts differently on the recorded holdout
EXIT_INTEGRITY = 3  # a recorded object does not match its digest (or is gone): nothing was fitted


def register(app: typer.Typer) -> None:
    app.add_typer(runs_app, name="runs")


def _get_run(url: str, run_id: str) -> dict[str, Any]:
    try:
        resp = httpx.get(f"{url}/v1/runs/{run_id}", timeout=30)
    except httpx.HTTPError as exc:
        raise fail(f"cannot reach {url}: {exc}") from None
    if resp.status_code == 404:
        raise fail(f"no run {run_id} (see `GET {url}/v1/runs`)")
    if resp.status_code != 200:
        raise fail(f"GET {url}/v1/runs/{run_id} → {resp.status_code}: {resp.text}")
    run: dict[str, Any] = resp.json()
    if run["status"] != "succeeded":
        raise fail(f"run {run['run_id']} is {run['status']}: only a run that produced a model can be reproduced")
    return run


async def _fetch(run: dict[str, Any]) -> tuple[dict[str, Any], bytes, bytes]:
    """The run's metadata, training set and model, each checked against its recorded SHA-256."""
    store = ArtifactStore.from_settings(stack_settings())
    metadata: dict[str, Any] = await store.get_json(run["metadata_key"], run["metadata_sha256"])
    recorded = metadata.get("training_set")
    if not recorded:
        raise fail(
            f"run {run['run_id']} recorded no training set (it predates training-set artifacts): it cannot be "
            "reproduced exactly"
        )
    training_set = await store.get(recorded["key"], recorded["sha256"])
    model = await store.get(metadata["artifact_key"], metadata["artifact_sha256"])
    return metadata, training_set, model


def _yes(value: bool) -> str:
    return "[green]identical[/green]" if value else "[red]different[/red]"


def _print(result: dict[str, Any], metadata: dict[str, Any]) -> None:
    ts = metadata["training_set"]
    table = Table(title=f"reproduce run {result['run_id']}", show_header=False)
    table.add_column("what")
    table.add_column("result")
    table.add_row("training set", f"{ts['key']} (sha256 {ts['sha256'][:16]}… verified, {ts['size']} bytes)")
    table.add_row("examples", f"{result['n_train']} train + {result['n_holdout']} holdout; refit={result['refit']}")
    table.add_row("estimator", f"{metadata['estimator']} (seed {metadata.get('seed')})")
    table.add_row(
        "holdout predictions",
        _yes(result["predictions_identical"])
        + ("" if result["predictions_identical"] else f" ({result['n_predictions_differ']} differ)"),
    )
    max_diff = result["max_probability_difference"]
    table.add_row(
        "holdout probabilities",
        _yes(result["probabilities_identical"])
        + (
            ""
            if result["probabilities_identical"]
            else f" (max difference {max_diff if max_diff is None else format(max_diff, '.3g')})"
        ),
    )
    table.add_row(
        "model file bytes",
        _yes(result["model_bytes_identical"])
        + f" (recorded {result['recorded_model_sha256'][:16]}…, new {result['new_model_sha256'][:16]}…)",
    )
    recorded_accuracy = result["recorded_accuracy"]
    table.add_row(
        "holdout accuracy",
        f"recorded {'—' if recorded_accuracy is None else f'{recorded_accuracy:.4f}'}, "
        f"re-fitted {result['new_accuracy']:.4f}",
    )
    diffs = result["library_differences"]
    table.add_row(
        "library versions",
        "same as recorded"
        if not diffs
        else "; ".join(f"{name} {d['recorded']} → {d['current']}" for name, d in diffs.items()),
    )
    table.add_row("code version", f"recorded {metadata.get('code_version', '—')}")
    console.print(table)


@runs_app.command("reproduce")
def reproduce(
    run_id: Annotated[str, typer.Argument(help="Run id (or the id of its training request).")],
    url: TrainingUrl = DEFAULT_TRAINING_URL,
    as_json: Annotated[bool, typer.Option("--json", help="Print the comparison as JSON.")] = False,
) -> None:
    """Re-fit a run from its recorded training set, estimator, parameters and seed, here and now.

    Every recorded object (metadata, training set, model) is checked against its SHA-256 first: a
    tampered or missing one stops the command (exit 3) before anything is fitted. Then it reports
    whether the new model's predictions and probabilities on the recorded holdout are identical to
    the stored model's, whether the model file's bytes are, and every library whose version
    differs from the run's record. Exit 0: identical holdout predictions; 1: they differ.
    The objects are read with the stack's settings (DRIFTLINE_MINIO_*, DRIFTLINE_ARTIFACT_BUCKET).
    """
    try:
        from driftline_ml.reproduce import reproduce as refit
        from driftline_ml.trainingset import TrainingSetError, read_training_set
    except ImportError:
        raise fail("re-fitting a run needs the ML stack: install driftline-cli[reproduce]", 2) from None

    run = _get_run(url, run_id)
    try:
        metadata, training_set, model = asyncio.run(_fetch(run))
    except (ArtifactIntegrityError, ArtifactNotFound) as exc:
        raise fail(f"{exc}: the run's record cannot be trusted, nothing was re-fitted", EXIT_INTEGRITY) from None
    try:
        outcome = refit(
            metadata, read_training_set(training_set), model, model_sha256=metadata["artifact_sha256"]
        ).as_dict()
    except TrainingSetError as exc:
        raise fail(f"the training set cannot be read: {exc}", EXIT_INTEGRITY) from None
    if as_json:
        console.print_json(json.dumps(outcome))
    else:
        _print(outcome, metadata)
    if not (outcome["predictions_identical"] and outcome["probabilities_identical"]):
        raise typer.Exit(EXIT_DIFFERENT)
