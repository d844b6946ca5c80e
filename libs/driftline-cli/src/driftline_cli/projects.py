"""``driftline projects …``: project definitions on the compacted ``projects`` topic (read and
written in Kafka directly; every service follows that topic)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from driftline_cli._common import console, err_console, fail, run, stack_settings

projects_app = typer.Typer(
    help="Projects on this install: apply a project file, list, show, diff and delete them.",
    no_args_is_help=True,
)

ProjectFile = Annotated[
    Path,
    typer.Argument(
        help="Project file (YAML); its payload schema (<event.schema>.avsc) is looked up next to it, "
        "then in schemas/events/.",
        exists=True,
        dir_okay=False,
        readable=True,
    ),
]
ProjectName = Annotated[str, typer.Argument(help="Project name.")]
JsonOutput = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def register(app: typer.Typer) -> None:
    app.add_typer(projects_app, name="projects")


def _definition(path: Path):  # type: ignore[no-untyped-def]
    from pydantic import ValidationError

    from driftline.projects import Definition
    from driftline.validation import SchemaNotSupported

    try:
        return Definition.from_file(path)
    except ValidationError as exc:
        lines = [f"  {'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise fail(f"{path} is not a valid project file:\n" + "\n".join(lines)) from None
    except (FileNotFoundError, SchemaNotSupported, ValueError) as exc:
        raise fail(f"{path}: {exc}") from None


def _print_plan(p, *, applied: bool) -> None:  # type: ignore[no-untyped-def]
    if p.unchanged:
        console.print(f"project [bold]{p.name}[/bold] is unchanged (version {p.version})")
        return
    if not p.changes:
        verb = "applied" if applied else "would apply"
        console.print(
            f"project [bold]{p.name}[/bold]: new, {verb} as version {p.version} (feature set {p.feature_set_version})"
        )
        return
    verb = "applied" if applied else "would apply"
    console.print(f"project [bold]{p.name}[/bold]: {verb} version {p.version} (feature set {p.feature_set_version})")
    for line in p.changes:
        console.print(f"  {line}", markup=False, highlight=False)


@projects_app.command("apply")
def apply(
    path: ProjectFile,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate and plan; publish nothing.")] = False,
) -> None:
    """Validate a project file and publish it as the project's next version.

    The same content again is not a new version; a change that would break the running project
    is refused, with the reasons."""
    from driftline.project_topic import ProjectLockError, applied_by_default, apply_definition
    from driftline.projects import ProjectRefused

    definition = _definition(path)
    try:
        p = run(apply_definition(stack_settings(), definition, applied_by=applied_by_default(), dry_run=dry_run))
    except ProjectLockError as exc:
        raise fail(str(exc)) from None
    except ProjectRefused as exc:
        err_console.print(f"[red]refused:[/red] project {exc.name!r} was not applied:")
        for problem in exc.problems:
            err_console.print(f"  - {problem}", markup=False, highlight=False)
        raise typer.Exit(1) from None
    _print_plan(p, applied=not dry_run)


@projects_app.command("diff")
def diff(path: ProjectFile) -> None:
    """What applying a project file would change (exit 1 when it would be refused)."""
    from driftline.project_topic import read_book

    definition = _definition(path)
    book = run(read_book(stack_settings()))
    p = book.plan(definition)
    _print_plan(p, applied=False)
    if p.refused:
        err_console.print("[red]it would be refused:[/red]")
        for problem in p.refused:
            err_console.print(f"  - {problem}", markup=False, highlight=False)
        raise typer.Exit(1)


@projects_app.command("list")
def list_projects(json_output: JsonOutput = False) -> None:
    """Every project on this install, with its version, event type and model."""
    from driftline.project_topic import read_book

    book = run(read_book(stack_settings()))
    rows = [a.summary() for a in book.values()]
    if json_output:
        console.print_json(json.dumps(rows))
        return
    table = Table(title=f"projects ({len(rows)})")
    for col in ("project", "version", "event type", "model", "feature set", "features", "applied", "by"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["project"],
            str(r["version"]),
            r["event_type"],
            r["model"],
            r["feature_set_version"],
            str(r["features"]),
            r["applied_at"][:19].replace("T", " "),
            r["applied_by"],
        )
    console.print(table)


@projects_app.command("show")
def show(name: ProjectName, json_output: JsonOutput = False) -> None:
    """A project's current definition: version, what changed last, and the document itself."""
    from driftline.project_topic import read_book

    current = run(read_book(stack_settings())).get(name)
    if current is None:
        raise fail(f"no project {name!r} (driftline projects list shows them)")
    out = current.summary() | {
        "changes": list(current.changes),
        "definition": current.definition.document(),
        "payload_schema": current.definition.payload_schema,
    }
    if json_output:
        console.print_json(json.dumps(out))
        return
    for key in (
        "project",
        "version",
        "event_type",
        "model",
        "feature_set_version",
        "applied_at",
        "applied_by",
        "digest",
    ):
        console.print(f"[bold]{key}[/bold]: {out[key]}")
    if current.changes:
        console.print("[bold]changes in this version[/bold]:")
        for line in current.changes:
            console.print(f"  {line}", markup=False, highlight=False)
    import yaml

    console.print("[bold]definition[/bold]:")
    console.print(yaml.safe_dump(out["definition"], sort_keys=False), highlight=False, markup=False)


@projects_app.command("delete")
def delete(
    name: ProjectName,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete a project: a deletion record and a tombstone on the projects topic.

    Its models' versions, stage history and artifacts stay in the registry and the object store;
    applying the file again brings the project back (see docs/projects.md)."""
    from driftline.project_topic import ProjectLockError, applied_by_default, delete_project

    if not yes:
        typer.confirm(f"delete project {name!r}?", abort=True)
    try:
        gone = run(delete_project(stack_settings(), name, applied_by=applied_by_default()))
    except KeyError:
        raise fail(f"no project {name!r} (driftline projects list shows them)") from None
    except ProjectLockError as exc:
        raise fail(str(exc)) from None
    console.print(f"project [bold]{name}[/bold] deleted (it was version {gone.version})")
