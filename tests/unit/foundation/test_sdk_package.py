"""A producer installs the SDK and nothing of the ML stack.

A fresh virtualenv gets ``libs/driftline`` and ``libs/driftline-sdk`` with their dependencies only
(versions held to requirements.lock, packages from the same uv cache as infra/venv.sh), and must
import ``driftline_sdk`` while numpy, scipy, scikit-learn, skops, faust and the other Driftline
packages stay out of it: a dependency that drags one in fails here, not in a producer's image.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
# Import names that must not be installed alongside the SDK.
ABSENT = ("sklearn", "scipy", "skops", "faust", "numpy", "typer", "rich", "driftline_ml", "driftline_cli")
PROBE = f"""
import importlib.util, json
import driftline_sdk
print(json.dumps({{name: importlib.util.find_spec(name) is not None for name in {ABSENT!r}}}))
"""


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


@pytest.fixture(scope="module")
def uv() -> str:
    path = pinned_uv()
    if path is None:
        pytest.skip("uv is missing: infra/venv.sh --uv could not provide it and none is on PATH")
    return path


def test_the_sdk_installs_without_the_ml_stack(uv: str, tmp_path: Path) -> None:
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

    probe = subprocess.run(
        [str(python), "-I", "-c", PROBE], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert probe.returncode == 0, f"import driftline_sdk failed in the SDK-only venv:\n{probe.stderr}"
    found = json.loads(probe.stdout.strip().splitlines()[-1])
    present = sorted(name for name, importable in found.items() if importable)
    assert not present, f"the SDK's install pulls in {present}"
