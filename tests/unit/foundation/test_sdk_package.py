"""A producer installs the SDK and nothing of the ML stack.

A fresh virtualenv gets ``libs/driftline`` and ``libs/driftline-sdk`` with their dependencies only
(versions held to requirements.lock, packages from the same uv cache as infra/venv.sh), and must
import ``driftline_sdk`` while numpy, scipy, scikit-learn, skops, faust and the other Driftline
packages stay out of it: a dependency that drags one in fails here, not in a producer's image.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.sdk_venv import build_sdk_venv, pinned_uv, uv_env

# Import names that must not be installed alongside the SDK.
ABSENT = ("sklearn", "scipy", "skops", "faust", "numpy", "typer", "rich", "driftline_ml", "driftline_cli")
PROBE = f"""
import importlib.util, json
import driftline_sdk
print(json.dumps({{name: importlib.util.find_spec(name) is not None for name in {ABSENT!r}}}))
"""


@pytest.fixture(scope="module")
def uv() -> str:
    path = pinned_uv()
    if path is None:
        pytest.skip("uv is missing: infra/venv.sh --uv could not provide it and none is on PATH")
    return path


def test_the_sdk_installs_without_the_ml_stack(uv: str, tmp_path: Path) -> None:
    env = uv_env()
    python = build_sdk_venv(uv, tmp_path)
    probe = subprocess.run(
        [str(python), "-I", "-c", PROBE], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert probe.returncode == 0, f"import driftline_sdk failed in the SDK-only venv:\n{probe.stderr}"
    found = json.loads(probe.stdout.strip().splitlines()[-1])
    present = sorted(name for name, importable in found.items() if importable)
    assert not present, f"the SDK's install pulls in {present}"
