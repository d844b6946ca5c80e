"""Finite numbers only, in every JSON document and every Avro record the platform writes.

JSON that PostgreSQL and every JSON reader accept: non-finite numbers become null.

``json.dumps`` writes ``NaN``, ``Infinity`` and ``-Infinity`` by default, which is not JSON:
PostgreSQL refuses it in a ``jsonb`` column, and a handler that retries the same batch would then
retry forever. A statistic or metric that is not finite (a Page-Hinkley minimum of ``-inf``, a
log loss of ``inf``) has no number to store, so every JSON document the platform writes goes
through :func:`dumps`, which stores it as ``null``.

Avro can carry NaN and infinities, but what reads a topic cannot do much with them (a comparison
with NaN is always false; a JSON rendering of the record is not JSON), so every record is encoded
through :func:`avro_sanitiser` of its schema (in :meth:`driftline.serde.AvroSerde.encode`): null
where the schema allows it, left out of a map of numbers, and a clear error where a number is
required.
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


# -- Avro ------------------------------------------------------------------------------------------

Sanitiser = Callable[[Any, str], Any]


class NotFinite(ValueError):
    """A non-finite number where the schema has no way to say "no number" (a required double)."""


def _identity(value: Any, path: str) -> Any:
    return value


def _is_nonfinite(value: Any) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def avro_sanitiser(schema: Any) -> Sanitiser:
    """A function that makes a record of ``schema`` (Avro JSON) carry finite numbers only.

    A non-finite ``float``/``double`` becomes null where the schema allows null, is left out of a
    map of required numbers (an entry without a number is absent: a metric that could not be
    computed), and raises :class:`NotFinite` naming the field where a number is required. Parts of
    the schema that hold no floating-point type are not walked."""
    named: dict[str, Sanitiser] = {}

    def compile_(s: Any) -> Sanitiser | None:  # None: nothing to do below this type
        if isinstance(s, str):
            if s in ("double", "float"):
                return _required_number
            if s in named:
                return named[s]
            return None
        if isinstance(s, list):
            return _union(s)
        t = s.get("type")
        if t == "record":
            name = s["name"]
            full = f"{s['namespace']}.{name}" if s.get("namespace") else name
            fields: list[tuple[str, Sanitiser]] = []
            for f in s["fields"]:
                fn_ = compile_(f["type"])
                if fn_ is not None:
                    fields.append((str(f["name"]), fn_))
            fn = _record(fields) if fields else None
            for key in (name, full):
                named[key] = fn if fn is not None else _identity
            return fn
        if t == "array":
            item = compile_(s["items"])
            return None if item is None else _array(item)
        if t == "map":
            values = compile_(s["values"])
            if values is None:
                return None
            return _map(values, dropped=not _nullable(s["values"]), scalar=_scalar(s["values"]))
        if t in ("double", "float"):
            return _required_number
        if t in ("enum", "fixed"):
            named[s["name"]] = _identity
        return None

    def _union(branches: list[Any]) -> Sanitiser | None:
        compiled = [(b, compile_(b)) for b in branches if b != "null"]
        nullable = "null" in branches
        if all(fn is None for _, fn in compiled):
            return None

        def sanitise(value: Any, path: str) -> Any:
            if _is_nonfinite(value):
                if nullable:
                    return None
                raise NotFinite(f"{path} is {value}: not a finite number")
            for branch, fn in compiled:
                if fn is not None and _may_be(branch, value):
                    return fn(value, path)
            return value

        return sanitise

    result = compile_(schema)
    return result if result is not None else _identity


def _scalar(s: Any) -> bool:
    """Only primitive types (no record, map or array below)."""
    branches = s if isinstance(s, list) else [s]
    return all(
        isinstance(b, str) and b in ("null", "boolean", "int", "long", "float", "double", "string", "bytes")
        for b in branches
    )


def _nullable(s: Any) -> bool:
    return isinstance(s, list) and "null" in s


def _may_be(branch: Any, value: Any) -> bool:
    kind = branch if isinstance(branch, str) else branch.get("type")
    if kind in ("double", "float"):
        return isinstance(value, float)
    if kind == "array":
        return isinstance(value, list | tuple)
    if kind in ("map", "record") or not isinstance(branch, dict):
        return isinstance(value, Mapping)
    return False


def _required_number(value: Any, path: str) -> Any:
    if _is_nonfinite(value):
        raise NotFinite(f"{path} is {value}: not a finite number")
    return value


def _record(fields: list[tuple[str, Sanitiser]]) -> Sanitiser:
    def sanitise(value: Any, path: str) -> Any:
        if value.__class__ is not dict and not isinstance(value, Mapping):  # dict first: no ABC check
            return value
        out: dict[str, Any] | None = None  # a copy only when something changes
        for name, fn in fields:
            if name in value:
                old = value[name]
                new = fn(old, f"{path}.{name}")
                if new is not old:
                    if out is None:
                        out = dict(value)
                    out[name] = new
        return value if out is None else out

    return sanitise


def _array(item: Sanitiser) -> Sanitiser:
    def sanitise(value: Any, path: str) -> Any:
        if not isinstance(value, list | tuple):
            return value
        return [item(v, f"{path}[{i}]") for i, v in enumerate(value)]

    return sanitise


def _map(values: Sanitiser, *, dropped: bool, scalar: bool) -> Sanitiser:
    def sanitise(value: Any, path: str) -> Any:
        if value.__class__ is not dict and not isinstance(value, Mapping):
            return value
        if scalar and not any(v.__class__ is float and not math.isfinite(v) for v in value.values()):
            return value  # the common case: nothing to change (numbers only, no nested values)
        return {k: values(v, f"{path}[{k!r}]") for k, v in value.items() if not (dropped and _is_nonfinite(v))}

    return sanitise
