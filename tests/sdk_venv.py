"""A fresh virtualenv holding only the SDK (libs/driftline and libs/driftline-sdk with their
dependencies, versions held to requirements.lock, packages from infra/venv.sh's uv cache): what a
producer installs. Used by the unit test that checks what it contains and by the integration test
that publishes from it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def pinned_uv() -> str | None:
    """The uv infra/venv.sh uses (installed by it on first use), else one on PATH."""
    try:
        out = subprocess.run(
            [str(ROOT / "infra" / "venv.sh"), "--uv"], capture_output=True, text=True, timeout=300, check=True
        )
        path = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
        if path and os.access(path, os.X_OK):
            return path
    except (OSError, subprocess.SubprocessError):
        pass
    return shutil.which("uv")


def uv_env() -> dict[str, str]:
    """infra/lib.sh's cache: $DRIFTLINE_CACHE_DIR, else ${XDG_CACHE_HOME:-~/.cache}/driftline."""
    cache = os.environ.get("DRIFTLINE_CACHE_DIR") or str(
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "driftline"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(UV_CACHE_DIR=str(Path(cache) / "uv-cache"), UV_PYTHON_DOWNLOADS="never", UV_NO_CONFIG="1")
    return env


def build_sdk_venv(uv: str, tmp_path: Path) -> Path:
    """The venv's python."""
    env = uv_env()
    venv = tmp_path / "venv"
    python = venv / "bin" / "python"
    subprocess.run(
        [uv, "venv", "--quiet", "--python", "3.11", str(venv)], env=env, cwd=tmp_path, check=True, timeout=120
    )
    install = [
        uv, "pip", "install", "--quiet", "--python", str(python),
        "--no-sources",  # as a producer gets them: built wheels, not the workspace's editables
        "-c", str(ROOT / "requirements.lock"),
        str(ROOT / "libs" / "driftline"), str(ROOT / "libs" / "driftline-sdk"),
    ]  # fmt: skip
    # From the cache when it holds everything (the usual case after `make venv`), else from the index.
    offline = subprocess.run([*install, "--offline"], env=env, cwd=tmp_path, capture_output=True, text=True)
    if offline.returncode != 0:
        online = subprocess.run(install, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert online.returncode == 0, f"installing the SDK failed:\n{offline.stderr}\n{online.stderr}"

    return python
