"""``driftline models …`` (the registry) and ``driftline retrain`` (the training service), over their HTTP APIs."""

from __future__ import annotations

import json as json_module
import os
import time
from typing import Annotated, Any

import httpx
import typer
from rich.table import Table

from driftline.settings import LOCAL_API_TOKEN
from driftline_cli._common import console, fail

DEFAULT_TRAINING_URL = "http://127.0.0.1:38103"
DEFAULT_REGISTRY_URL = "http://127.0.0.1:38104"
DEFAULT_MONITORING_URL = "http://127.0.0.1:38106"

models_app = typer.Typer(
    help="The model registry: versions, model cards, stage history, promotion, shadow and canary deployment, rollback.",
    no_args_is_help=True,
)

RegistryUrl = Annotated[
    str, typer.Option("--url", envvar="DRIFTLINE_REGISTRY_URL", help="Registry service URL.", show_default=True)
]
TrainingUrl = Annotated[
    str, typer.Option("--url", envvar="DRIFTLINE_TRAINING_URL", help="Training service URL.", show_default=True)
]
MonitoringUrl = Annotated[
    str,
    typer.Option(
        "--monitoring-url", envvar="DRIFTLINE_MONITORING_URL", help="Monitoring service URL.", show_default=True
    ),
]
Token = Annotated[
    str,
    typer.Option(
        "--token",
        envvar="DRIFTLINE_API_TOKEN",
        help="API token for write actions (default: the local-mode token).",
        show_default=False,
    ),
]
ModelName = Annotated[str, typer.Argument(help="Model name.")]
Reason = Annotated[str | None, typer.Option("--reason", "-r", help="Why; recorded in the history and the event.")]


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")
    app.command(
        "retrain",
        help="Ask the training service for a run now (published on training.requested); --wait follows it.",
    )(retrain)


def _call(method: str, url: str, *, token: str | None = None, json: Any = None, ok: tuple[int, ...] = (200,)) -> Any:
    """One API call; reads send ``DRIFTLINE_API_TOKEN`` when it is set (outside local mode they
    need a token with the ``read`` scope)."""
    token = token or os.environ.get("DRIFTLINE_API_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        resp = httpx.request(method, url, json=json, headers=headers, timeout=30)
    except httpx.HTTPError as exc:
        raise fail(f"cannot reach {url}: {exc}") from None
    if resp.status_code not in ok:
        try:
            detail = resp.json().get("detail", resp.text)
        except ValueError:
            detail = resp.text
        if isinstance(detail, dict):
            detail = detail.get("reason") or detail
        raise fail(f"{method} {url} → {resp.status_code}: {detail}")
    return resp.json()


def _metric(metrics: dict[str, float] | None, name: str) -> str:
    if not metrics or name not in metrics:
        return "—"
    return f"{metrics[name]:.4f}"


def _time(value: str | None) -> str:
    return (value or "—").replace("T", " ")[:19]


def _version(value: int | None) -> str:
    return "—" if value is None else f"v{value}"


def _challenger(model: dict[str, Any]) -> str:
    """The challenger, and the share of the entities it serves when it is a canary."""
    fraction = model.get("canary_fraction")
    version = _version(model["challenger_version"])
    return version if fraction is None or model["challenger_version"] is None else f"{version} (canary {fraction:g})"


@models_app.command("list")
def list_models(
    url: RegistryUrl = DEFAULT_REGISTRY_URL,
    project: Annotated[str | None, typer.Option("--project", help="Only the model of this project.")] = None,
) -> None:
    """Every model with its project, champion, challenger (in shadow, or a canary with its share)
    and latest version."""
    query = f"?project={project}" if project else ""
    models = _call("GET", f"{url}/v1/models{query}")["models"]
    table = Table(title="models")
    for col in ("model", "project", "champion", "challenger", "latest", "versions", "updated"):
        table.add_column(col)
    for m in models:
        table.add_row(
            m["name"],
            m.get("project") or "—",
            _version(m["champion_version"]),
            _challenger(m),
            _version(m["latest_version"]),
            str(m["versions"]),
            _time(m["updated_at"]),
        )
    console.print(table)


@models_app.command("versions")
def versions(
    name: ModelName,
    stage: Annotated[str | None, typer.Option(help="Only this stage (champion, rejected, archived…).")] = None,
    url: RegistryUrl = DEFAULT_REGISTRY_URL,
) -> None:
    """A model's versions with their holdout metrics, trigger and stage."""
    query = f"?stage={stage}" if stage else ""
    rows = _call("GET", f"{url}/v1/models/{name}/versions{query}")["versions"]
    table = Table(title=f"{name} versions")
    for col in ("version", "stage", "accuracy", "roc_auc", "champion acc.", "vs", "trigger", "drift episode", "run"):
        table.add_column(col)
    for v in rows:
        table.add_row(
            f"v{v['version']}",
            v["stage"],
            _metric(v["metrics"], "accuracy"),
            _metric(v["metrics"], "roc_auc"),
            _metric(v["champion_metrics"], "accuracy"),
            _version(v["evaluated_against"]),
            v["trigger"],
            v["drift_episode_id"] or "—",
            v["run_id"][:8],
        )
    console.print(table)


@models_app.command("history")
def history(
    name: ModelName,
    limit: Annotated[int, typer.Option(help="Most recent entries to show.")] = 50,
    url: RegistryUrl = DEFAULT_REGISTRY_URL,
) -> None:
    """Stage history: registrations, promotions, rejections, rollbacks, shadows, deployments."""
    rows = _call("GET", f"{url}/v1/models/{name}/history?limit={limit}")["history"]
    table = Table(title=f"{name} history (most recent first)")
    for col in ("time", "action", "version", "previous", "actor", "reason"):
        table.add_column(col)
    for h in rows:
        table.add_row(
            _time(h["at"]),
            h["action"],
            _version(h["version"]),
            _version(h["previous_version"]),
            h["actor"],
            h["reason"],
        )
    console.print(table)


def _metrics_text(metrics: dict[str, float] | None) -> str:
    if not metrics:
        return "—"
    return ", ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items()))


def _card_rows(card: dict[str, Any]) -> list[tuple[str, str]]:
    """The model card as (field, value) rows, in the order a reviewer reads it."""
    rows: list[tuple[str, str]] = [
        ("stage", card["stage"] + (" (champion)" if card["is_champion"] else "")),
        ("artifact", f"{card['artifact_key']} (sha256 {card['artifact_sha256']})"),
    ]
    ts = card.get("training_set")
    if ts is None:
        rows.append(("training set", "not recorded (trained before runs recorded their training set)"))
    else:
        rows += [
            ("training set", f"{ts['key']} (sha256 {ts['sha256']}, {ts['size']} bytes)"),
            ("examples", f"{ts['rows']}: {ts['n_train']} train + {ts['n_holdout']} holdout"),
            ("time range", f"{_time(ts['start'])} → {_time(ts['end'])} (event time)"),
            ("labels as of", _time(ts["labels_as_of"])),
        ]
    rows += [
        ("feature set", f"version {card['feature_set_version']}: {', '.join(card['feature_names'])}"),
        ("params", ", ".join(f"{k}={v}" for k, v in sorted(card["params"].items()))),
        ("code version", card.get("code_version") or "not recorded"),
        ("holdout metrics", _metrics_text(card["holdout_metrics"])),
    ]
    cmp = card["comparison"]
    if cmp["champion_version"] is None:
        rows.append(("champion comparison", "none (no champion when trained)"))
    else:
        rows.append(
            (
                "champion comparison",
                f"vs {_version(cmp['champion_version'])} on {cmp['n_comparison']} holdout examples: "
                f"candidate {_metrics_text(cmp['candidate_metrics'])}; "
                f"champion {_metrics_text(cmp['champion_metrics'])}",
            )
        )
    decision = cmp["decision"]
    if decision is not None:
        rows.append(
            (
                "decision",
                f"{decision['action']} on {decision['metric']}: candidate {decision.get('candidate_value')} vs "
                f"champion {decision.get('champion_value')} (margin {decision.get('margin')})",
            )
        )
    lin = card["lineage"]
    promotion, rejection = lin["promotion"], lin["rejection"]
    rows += [
        ("correlation", lin["correlation_id"]),
        ("drift episode", lin["drift_episode_id"] or f"— (trigger {lin['trigger']})"),
        ("training request", lin["training_request_id"] or "—"),
        ("run", lin["run_id"]),
        ("models.trained", lin["trained_event_id"]),
        (
            "promotion",
            "—"
            if promotion is None
            else f"{promotion['action']} {promotion['event_id']} at {_time(promotion['at'])} by {promotion['actor']}",
        ),
    ]
    if rejection is not None:
        rows.append(("rejection", f"{rejection['event_id']} at {_time(rejection['at'])}: {rejection['reason']}"))
    for d in lin["deployments"] or [None]:
        rows.append(
            (
                "deployment",
                "—"
                if d is None
                else f"{d['instance_id']} {d['slot']} {d['status']} at {_time(d['at'])} ({d['event_id']})",
            )
        )
    return rows


@models_app.command("show")
def show(
    name: ModelName,
    version: Annotated[int, typer.Argument(help="Version to describe.")],
    url: RegistryUrl = DEFAULT_REGISTRY_URL,
    as_json: Annotated[bool, typer.Option("--json", help="Print the registry's document as JSON.")] = False,
) -> None:
    """A version's model card: what it was trained on (training-set key, size, time range), its
    params, holdout metrics, the champion comparison, its lineage (drift episode → request → run
    → version → promotion → deployment) and its full stage history."""
    card = _call("GET", f"{url}/v1/models/{name}/versions/{version}")
    if as_json:
        console.print_json(json_module.dumps(card, default=str))
        return
    table = Table(title=f"{name} v{version}", show_header=False)
    table.add_column("field")
    table.add_column("value", overflow="fold")
    for key, value in _card_rows(card):
        table.add_row(key, value)
    console.print(table)
    hist = Table(title=f"{name} v{version} stage history (oldest first)")
    for col in ("time", "action", "previous", "actor", "reason", "event"):
        hist.add_column(col)
    for h in reversed(card["history"]):
        hist.add_row(
            _time(h["at"]), h["action"], _version(h["previous_version"]), h["actor"], h["reason"], h["event_id"]
        )
    console.print(hist)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


@models_app.command("compare")
def compare(
    name: ModelName,
    url: MonitoringUrl = DEFAULT_MONITORING_URL,
    confidence: Annotated[float, typer.Option(help="Two-sided confidence of the interval.")] = 0.95,
    min_pairs: Annotated[int, typer.Option(help="Paired labelled outcomes needed for a verdict.")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="Print monitoring's document as JSON.")] = False,
) -> None:
    """The challenger against the champion (from monitoring): in shadow, on the same labelled
    events (both accuracies, the difference with its confidence interval, McNemar's p-value, the
    verdict); for a canary, on the labelled events each side of the traffic split served."""
    doc = _call("GET", f"{url}/v1/models/{name}/comparison?confidence={confidence}&min_pairs={min_pairs}")
    if as_json:
        console.print_json(json_module.dumps(doc, default=str))
        return
    _print_canaries(name, doc.get("canaries") or [])
    rows = doc["comparisons"]
    if not rows:
        console.print(f"{name}: no challenger prediction joined with a label and the champion's yet")
        return
    table = Table(title=f"{name}: challenger vs champion on the same labelled events ({confidence:.0%} interval)")
    for col in (
        "champion",
        "challenger",
        "pairs",
        "champion acc",
        "challenger acc",
        "difference",
        "interval",
        "p",
        "verdict",
    ):
        table.add_column(col)
    for r in rows:
        interval = "-" if r["interval"] is None else f"[{r['interval'][0]:+.4f}, {r['interval'][1]:+.4f}]"
        diff = "-" if r["difference"] is None else f"{r['difference']:+.4f}"
        p = "-" if r["p_value"] is None else f"{r['p_value']:.3g}"
        table.add_row(
            f"v{r['champion_version']}",
            f"v{r['challenger_version']}",
            str(r["labelled_pairs"]),
            _pct(r["champion_accuracy"]),
            _pct(r["challenger_accuracy"]),
            diff,
            interval,
            p,
            r["verdict"],
        )
    console.print(table)


def _print_canaries(name: str, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    table = Table(title=f"{name}: canary vs champion, each on the labelled events it served")
    for col in ("champion", "canary", "share", "labelled", "champion acc", "canary acc", "difference", "interval",
                "p", "verdict"):  # fmt: skip
        table.add_column(col)
    for r in rows:
        interval = r.get("interval")
        table.add_row(
            f"v{r['champion_version']}",
            f"v{r['challenger_version']}",
            "-" if r.get("traffic_fraction") is None else f"{r['traffic_fraction']:g}",
            f"{r.get('challenger_labelled', 0)} / {r.get('champion_labelled', 0)}",
            _pct(r.get("champion_accuracy")),
            _pct(r.get("challenger_accuracy")),
            "-" if r.get("difference") is None else f"{r['difference']:+.4f}",
            "-" if interval is None else f"[{interval[0]:+.4f}, {interval[1]:+.4f}]",
            "-" if r.get("p_value") is None else f"{r['p_value']:.3g}",
            str(r.get("verdict", "-")),
        )
    console.print(table)


def _print_action(result: dict[str, Any]) -> None:
    published = "published" if result["published"] else "stored; will be published when Kafka answers"
    console.print(
        f"{result['action']}: {result['model_name']} v{result['version']} "
        f"(previous {_version(result['previous_version'])}) by {result['actor']} — {published}\n"
        f"event {result['event_id']} (correlation {result['correlation_id']})"
    )


def _version_action(action: str, name: str, version: int, reason: str | None, url: str, token: str) -> None:
    body = {"reason": reason} if reason else None
    path = f"{url}/v1/models/{name}/versions/{version}/{action}"
    _print_action(_call("POST", path, token=token, json=body, ok=(200, 202)))


def _version_command(action: str, version_help: str, doc: str) -> None:
    """Register ``models <action> NAME VERSION``, which posts the action on that version."""

    def command(
        name: ModelName,
        version: int,
        reason: Reason = None,
        url: RegistryUrl = DEFAULT_REGISTRY_URL,
        token: Token = LOCAL_API_TOKEN,
    ) -> None:
        _version_action(action, name, version, reason, url, token)

    # The version's help is the action's; this module's annotations are strings, so it is set here.
    command.__annotations__["version"] = Annotated[int, typer.Argument(help=version_help)]
    models_app.command(action, help=doc)(command)


for _action, _version_help, _doc in (
    (
        "promote",
        "Version to make champion.",
        "Make a version the champion now (models.promoted; deployment hot-swaps it).",
    ),
    (
        "shadow",
        "Version to deploy as challenger.",
        "Deploy a version as the challenger: scored in shadow next to the champion, never served.",
    ),
):
    _version_command(_action, _version_help, _doc)


@models_app.command("canary")
def canary(
    name: ModelName,
    version: Annotated[int, typer.Argument(help="Version to deploy as the canary.")],
    fraction: Annotated[
        float, typer.Option("--fraction", "-f", min=0.0, max=1.0, help="Share of the entities it serves (0-1].")
    ] = 0.1,
    reason: Reason = None,
    url: RegistryUrl = DEFAULT_REGISTRY_URL,
    token: Token = LOCAL_API_TOKEN,
) -> None:
    """Deploy a version as a canary: it serves --fraction of the entities (split by entity id, the
    same on every instance), the champion the rest. Monitoring compares both on their labelled
    events; the policy then promotes the canary or withdraws it (each decision on models.promoted
    with its evidence). `driftline models compare NAME` shows where the comparison stands."""
    if fraction <= 0:
        fail("--fraction must be above 0")
    body: dict[str, Any] = {"fraction": fraction}
    if reason:
        body["reason"] = reason
    result = _call("POST", f"{url}/v1/models/{name}/versions/{version}/canary", token=token, json=body, ok=(200, 202))
    _print_action(result)
    console.print(f"serving {result['traffic_fraction']:g} of the entities")


@models_app.command("canary-rollback")
def canary_rollback(
    name: ModelName,
    reason: Reason = None,
    url: RegistryUrl = DEFAULT_REGISTRY_URL,
    token: Token = LOCAL_API_TOKEN,
) -> None:
    """Withdraw the canary now: the champion serves every entity again (the canary version is
    marked rolled back)."""
    body = {"reason": reason} if reason else None
    _print_action(_call("POST", f"{url}/v1/models/{name}/canary/rollback", token=token, json=body, ok=(200, 202)))


@models_app.command("rollback")
def rollback(
    name: ModelName,
    to: Annotated[
        int | None, typer.Option("--to", help="Version to bring back (default: the previous champion).")
    ] = None,
    reason: Reason = None,
    url: RegistryUrl = DEFAULT_REGISTRY_URL,
    token: Token = LOCAL_API_TOKEN,
) -> None:
    """Bring back the previous champion; the current one is marked rolled back."""
    body: dict[str, Any] = {}
    if reason:
        body["reason"] = reason
    if to is not None:
        body["to_version"] = to
    _print_action(_call("POST", f"{url}/v1/models/{name}/rollback", token=token, json=body or None, ok=(200, 202)))


def _parse_params(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise fail(f"--param {item!r}: use key=value (e.g. max_examples=2000)", 2)
        out[key.strip()] = value.strip()
    return out


def retrain(
    model: Annotated[str | None, typer.Option(help="Model to train (default: the project's model).")] = None,
    reason: Annotated[str, typer.Option(help="Why; recorded with the run.")] = "manual",
    since: Annotated[
        str | None, typer.Option(help="With selection since_drift: only examples at/after this ISO time.")
    ] = None,
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param",
            "-p",
            help="Training-policy override key=value "
            "(min_examples, max_examples, holdout_fraction, selection, seed, refit).",
        ),
    ] = None,
    request_id: Annotated[str | None, typer.Option(help="Idempotency key: the same id never runs twice.")] = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Wait for the run and print its outcome.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait with --wait.")] = 600.0,
    url: TrainingUrl = DEFAULT_TRAINING_URL,
    token: Token = LOCAL_API_TOKEN,
) -> None:
    body: dict[str, Any] = {"reason": reason, "parameters": _parse_params(param or [])}
    for key, value in (("model_name", model), ("since", since), ("request_id", request_id)):
        if value is not None:
            body[key] = value
    accepted = _call("POST", f"{url}/v1/training-requests", token=token, json=body, ok=(202,))
    console.print(
        f"training requested: request {accepted['request_id']} → run {accepted['run_id']} "
        f"(correlation {accepted['correlation_id']})"
    )
    if not wait:
        return
    deadline = time.monotonic() + timeout
    run: dict[str, Any] | None = None
    with console.status("waiting for the run…"):
        while time.monotonic() < deadline:
            try:
                resp = httpx.get(f"{url}/v1/runs/{accepted['run_id']}", timeout=30)
            except httpx.HTTPError as exc:
                raise fail(f"cannot reach {url}: {exc}") from None
            if resp.status_code == 200 and resp.json()["status"] != "running":
                run = resp.json()
                break
            time.sleep(1.0)
    if run is None:
        raise fail(f"the run did not finish within {timeout:g}s (see GET {url}/v1/runs/{accepted['run_id']})")
    _print_run(run)
    if run["status"] != "succeeded":
        raise typer.Exit(1)


def _print_run(run: dict[str, Any]) -> None:
    table = Table(title=f"run {run['run_id']}", show_header=False)
    table.add_column("field")
    table.add_column("value")
    table.add_row("status", run["status"])
    if run["status"] == "succeeded":
        for name in ("accuracy", "roc_auc", "f1", "log_loss"):
            champion = _metric(run["champion_metrics"], name)
            table.add_row(
                name, f"{_metric(run['metrics'], name)} (champion {_version(run['champion_version'])}: {champion})"
            )
        table.add_row("examples", f"{run['n_train']} train + {run['n_holdout']} holdout")
        table.add_row("dataset", run["dataset_fingerprint"])
        table.add_row("artifact", f"{run['artifact_key']} (sha256 {run['artifact_sha256'][:16]}…)")
        table.add_row("duration", f"{run['duration_s']:.2f}s")
    else:
        table.add_row("error", f"{run['error_type']}: {run['error_reason']}")
    console.print(table)
    if run["status"] == "succeeded":
        console.print("the registry decides on promotion: see `driftline models history`")
