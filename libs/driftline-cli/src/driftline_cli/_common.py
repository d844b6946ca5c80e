"""Helpers shared by the CLI's command modules."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console

from driftline.settings import StackSettings, repo_root

console = Console()
err_console = Console(stderr=True)
T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def stack_settings() -> StackSettings:
    return StackSettings()


def stack_script() -> Path:
    root = repo_root()
    if root is None:
        err_console.print("[red]infra/stack.sh is only available in a Driftline checkout[/red]")
        raise typer.Exit(2)
    return root / "infra" / "stack.sh"


def run_stack_script(*args: str) -> int:
    return subprocess.call([str(stack_script()), *args], env=os.environ.copy())  # noqa: S603


def run_services_script(*args: str, extra_env_file: Path | None = None) -> int:
    """infra/services.sh: the six services under honcho (``extra_env_file`` layers over the stack's)."""
    env = os.environ.copy()
    if extra_env_file is not None:
        env["DRIFTLINE_SERVICES_ENV"] = str(extra_env_file)
    return subprocess.call([str(stack_script().parent / "services.sh"), *args], env=env)  # noqa: S603


def fail(message: str, code: int = 1) -> typer.Exit:
    err_console.print(f"[red]error:[/red] {message}")
    return typer.Exit(code)
