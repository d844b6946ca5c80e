"""Every `driftline` command and group answers --help with its usage and a description."""

from __future__ import annotations

from typing import Any

import typer
from typer.testing import CliRunner

from driftline_cli.main import app

ISSUE_COMMANDS = {
    ("up",), ("down",), ("status",), ("publish",), ("topics",), ("retrain",), ("trace",), ("demo",),
    ("models", "list"), ("models", "history"), ("models", "promote"), ("models", "rollback"),
    ("dlq", "list"), ("dlq", "replay"), ("services", "up"), ("services", "down"),
}  # fmt: skip


def command_paths() -> list[tuple[str, ...]]:
    root = typer.main.get_command(app)
    paths: list[tuple[str, ...]] = []

    def walk(cmd: Any, path: tuple[str, ...]) -> None:  # typer's own click types: groups have .commands
        paths.append(path)
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, (*path, name))

    walk(root, ())
    return paths


def test_the_operator_commands_exist() -> None:
    missing = ISSUE_COMMANDS - set(command_paths())
    assert not missing, f"missing commands: {sorted(missing)}"


def test_every_command_has_help() -> None:
    runner = CliRunner()
    for path in command_paths():
        result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, (path, result.output)
        assert "Usage:" in result.output, path
        body = result.output.split("Usage:", 1)[1].splitlines()[1:]
        assert any(line.strip(" │╭╰─") for line in body), f"{' '.join(path)} --help has no description"
