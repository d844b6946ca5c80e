"""Where a model comes from: the code version and the library versions every run records."""

from __future__ import annotations

import functools
import os
import subprocess

from driftline.settings import repo_root
from driftline_ml import provenance

UNKNOWN = "unknown"


@functools.cache
def code_version() -> str:
    """``DRIFTLINE_CODE_VERSION`` (an image's build argument), else the checkout's git commit,
    else ``unknown``: never a version that does not name the code."""
    explicit = os.environ.get("DRIFTLINE_CODE_VERSION", "").strip()
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
    return UNKNOWN


@functools.cache
def library_versions() -> dict[str, str]:
    return provenance.library_versions()
