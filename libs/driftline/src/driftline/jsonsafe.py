"""JSON that PostgreSQL and every JSON reader accept: non-finite numbers become null.

``json.dumps`` writes ``NaN``, ``Infinity`` and ``-Infinity`` by default, which is not JSON:
PostgreSQL refuses it in a ``jsonb`` column, and a handler that retries the same batch would then
retry forever. A statistic or metric that is not finite (a Page-Hinkley minimum of ``-inf``, a
log loss of ``inf``) has no number to store, so every JSON document the platform writes goes
through :func:`dumps`, which stores it as ``null``.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any


def finite(value: Any) -> Any:
    """``value`` with every non-finite float in it (at any depth) replaced by ``None``."""
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def dumps(
    doc: Any,
    *,
    default: Callable[[Any], Any] | None = str,
    sort_keys: bool = False,
    separators: tuple[str, str] | None = None,
) -> str:
    """``json.dumps`` of ``doc`` with non-finite numbers as ``null`` (never ``NaN``/``Infinity``).

    What ``default`` converts is sanitised too."""

    def convert(obj: Any) -> Any:
        if default is None:
            raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")
        return finite(default(obj))

    return json.dumps(finite(doc), default=convert, sort_keys=sort_keys, separators=separators, allow_nan=False)
