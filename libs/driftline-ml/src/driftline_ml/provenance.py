"""The library versions a run records, and how another environment differs from them."""

from __future__ import annotations

import importlib.metadata
import platform
from collections.abc import Mapping

# What decides a fitted model's bytes and predictions (and the file formats it is read from).
RECORDED_DISTRIBUTIONS = (
    "scikit-learn",
    "numpy",
    "scipy",
    "skops",
    "pyarrow",
    "driftline",
    "driftline-ml",
    "driftline-training",
)


def library_versions() -> dict[str, str]:
    """Python's version and each recorded distribution's ("not installed" when absent)."""
    out = {"python": platform.python_version()}
    for dist in RECORDED_DISTRIBUTIONS:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def version_differences(recorded: Mapping[str, str], current: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    """Every library whose version differs: name → (recorded, current); "not recorded" when the
    record does not name it."""
    out = {}
    for name in sorted(set(recorded) | set(current)):
        was, now = recorded.get(name, "not recorded"), current.get(name, "not installed")
        if was != now:
            out[name] = (was, now)
    return out
