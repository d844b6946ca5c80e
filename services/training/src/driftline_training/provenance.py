"""Where a model comes from: the code version and the library versions every run records."""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import subprocess

from driftline.settings import repo_root

RECORDED_DISTRIBUTIONS = ("scikit-learn", "numpy", "scipy", "skops", "driftline", "driftline-training")


@functools.cache
def code_version() -> str:
    """``DRIFTLINE_CODE_VERSION``, else the checkout's git commit, else the package version."""
    explicit = os.environ.get("DRIFTLINE_CODE_VERSION")
    if explicit:
        return explicit
    root = repo_root()
    if root is not None:
        try:
            out = subprocess.run(
                ["git", "rev-parse", "HEAD"],  # noqa: S607 - git from PATH, fixed arguments
                cwd=root,
                capture_output=True,
                text=True,
                timeout=5,
                check=True,
            )
            dirty = subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],  # noqa: S607
                cwd=root,
                capture_output=True,
                text=True,
                timeout=5,
                check=False,
            )
            return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
        except (OSError, subprocess.SubprocessError):
            pass
    return f"driftline-training {importlib.metadata.version('driftline-training')}"


@functools.cache
def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in RECORDED_DISTRIBUTIONS:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "unknown"
    return out
