"""The project file's feature definitions, made executable: raw fields, derived features and
per-entity windowed aggregates.

Every reader of the project file that needs to *compute* features uses this module, so a feature
means the same thing everywhere: the features service computes vectors with it, and tests or an
offline backfill can replay the exact same logic.

Derived ``expr`` features are compiled by a small AST walker that accepts only numbers, feature
names, ``+ - * / % **``, unary minus/plus, parentheses and a few math functions; nothing is
``eval``'d. A derived ``function`` names a Python callable as ``'module:function'``; it is called
with a read-only mapping of the features computed before it.

Windowed value of an event (the contract; see services/features/README.md):

* windows are aligned on the Unix epoch (UTC); a window is ``[start, start + size)``;
* the event's window is the one that contains its event time and closes first: for a tumbling
  window the only one that contains it, for a hopping window the earliest-starting one (the one
  holding the most history);
* the value aggregates the field over the entity's on-time events in that window whose event
  time is at or before the event's own (the event included), among those processed before it;
  so a vector never sees the future (point-in-time correct), whatever order events arrive in;
* the entity's watermark is the greatest event time it has seen; an event older than
  ``watermark - lateness`` is *late* for that window: it does not update it, and its own value is
  computed from the window as it stands (None when that part of the window is no longer kept).
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from driftline.project import FeatureSpec, WindowedFeature, parse_duration

FeatureValue = float | str | None
Row = Mapping[str, FeatureValue]


class FeatureDefinitionError(ValueError):
    """A feature definition that cannot be compiled (names the feature and the reason)."""


# ---------------------------------------------------------------------------------------------
# Values


def to_feature_value(value: Any) -> FeatureValue:
    """A payload or computed value as a vector carries it: numbers as float, text as str, else None."""
    if value is None:
        return None
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        f = float(value)
        return f if math.isfinite(f) else None
    if isinstance(value, str):
        return value
    return None


def _num(value: Any) -> float | None:
    if isinstance(value, float):
        return value
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int):
        return float(value)
    return None


# ---------------------------------------------------------------------------------------------
# Safe arithmetic expressions

_Eval = Callable[[Row], float | None]

_UNARY_FUNCTIONS: dict[str, Callable[[float], float]] = {
    "abs": abs,
    "sqrt": math.sqrt,
    "exp": math.exp,
    "log1p": math.log1p,
    "floor": lambda x: float(math.floor(x)),
    "ceil": lambda x: float(math.ceil(x)),
}
FUNCTIONS = sorted([*_UNARY_FUNCTIONS, "log", "min", "max"])


def _pow(a: float, b: float) -> float | None:
    result: Any = a**b
    return None if isinstance(result, complex) else float(result)


def _div(a: float, b: float) -> float | None:
    return None if b == 0 else a / b


def _mod(a: float, b: float) -> float | None:
    return None if b == 0 else a % b


_BINARY: dict[type[ast.operator], Callable[[float, float], float | None]] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: _div,
    ast.Mod: _mod,
    ast.Pow: _pow,
}


class Expression:
    """A compiled arithmetic expression over feature names; evaluates to a float or None.

    None when an operand is missing or not a number, on division by zero, outside a function's
    domain (``log(0)``, ``sqrt(-1)``), or when the result is not a finite real number.
    """

    MAX_LENGTH = 2000

    def __init__(self, text: str, known_names: Sequence[str] | None = None) -> None:
        self.text = text
        if len(text) > self.MAX_LENGTH:
            raise FeatureDefinitionError(f"expression longer than {self.MAX_LENGTH} characters")
        try:
            tree = ast.parse(text.strip(), mode="eval")
        except SyntaxError as exc:
            raise FeatureDefinitionError(f"expression {text!r} is not valid: {exc.msg}") from None
        self._known = set(known_names) if known_names is not None else None
        self.names: set[str] = set()
        self._fn = self._compile(tree.body)

    def __call__(self, row: Row) -> float | None:
        try:
            result = self._fn(row)
        except (ZeroDivisionError, OverflowError, ValueError, TypeError):
            return None
        return result if result is not None and math.isfinite(result) else None

    def _compile(self, node: ast.AST) -> _Eval:
        if isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, int | float):
                raise FeatureDefinitionError(f"only numbers may appear as constants, not {node.value!r}")
            constant = float(node.value)
            return lambda row: constant
        if isinstance(node, ast.Name):
            name = node.id
            if self._known is not None and name not in self._known:
                raise FeatureDefinitionError(f"unknown feature {name!r} (known before it: {sorted(self._known)})")
            self.names.add(name)
            return lambda row: _num(row.get(name))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
            operand = self._compile(node.operand)
            sign = -1.0 if isinstance(node.op, ast.USub) else 1.0

            def unary(row: Row) -> float | None:
                v = operand(row)
                return None if v is None else sign * v

            return unary
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            op = _BINARY[type(node.op)]
            left, right = self._compile(node.left), self._compile(node.right)

            def binary(row: Row) -> float | None:
                a = left(row)
                if a is None:
                    return None
                b = right(row)
                return None if b is None else op(a, b)

            return binary
        if isinstance(node, ast.Call):
            return self._compile_call(node)
        raise FeatureDefinitionError(
            f"{type(node).__name__} is not allowed in an expression: use numbers, feature names, "
            f"+ - * / % **, parentheses and {', '.join(FUNCTIONS)}"
        )

    def _compile_call(self, node: ast.Call) -> _Eval:
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
            shown = ast.unparse(node.func)
            raise FeatureDefinitionError(f"function {shown!r} is not allowed; allowed: {', '.join(FUNCTIONS)}")
        if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
            raise FeatureDefinitionError(f"{node.func.id}() takes positional arguments only")
        name = node.func.id
        args = [self._compile(a) for a in node.args]
        if name in _UNARY_FUNCTIONS:
            if len(args) != 1:
                raise FeatureDefinitionError(f"{name}() takes one argument")
            fn, (arg,) = _UNARY_FUNCTIONS[name], args

            def unary_call(row: Row) -> float | None:
                v = arg(row)
                return None if v is None else fn(v)

            return unary_call
        if name == "log":
            if len(args) not in (1, 2):
                raise FeatureDefinitionError("log() takes one argument, or two (value, base)")

            def log(row: Row) -> float | None:
                values = [a(row) for a in args]
                if any(v is None for v in values):
                    return None
                return math.log(*values)  # type: ignore[arg-type]

            return log
        if not args:
            raise FeatureDefinitionError(f"{name}() takes at least one argument")
        pick = min if name == "min" else max

        def extreme(row: Row) -> float | None:
            values = [a(row) for a in args]
            if any(v is None for v in values):
                return None
            return pick(v for v in values if v is not None)

        return extreme


def load_function(path: str) -> Callable[[Row], Any]:
    """The callable named ``'module:function'`` (imported once at start-up)."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise FeatureDefinitionError(f"function {path!r} must look like 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise FeatureDefinitionError(f"cannot import {module_name!r} for function {path!r}: {exc}") from exc
    target: Any = module
    for part in attr.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise FeatureDefinitionError(f"{module_name!r} has no attribute {attr!r}")
    if not callable(target):
        raise FeatureDefinitionError(f"{path!r} is not callable")
    fn: Callable[[Row], Any] = target
    return fn


# ---------------------------------------------------------------------------------------------
# Windows and aggregates

AGGREGATES = ("count", "sum", "mean", "min", "max", "stddev")


def aggregate(agg: str, values: Sequence[FeatureValue]) -> float | None:
    """One aggregate over the non-null values of a window.

    ``count`` counts non-null values (text included); the others use numbers only. An empty
    window gives 0.0 for count and sum, None for the rest. ``stddev`` is the population standard
    deviation. Sums use ``math.fsum`` (correctly rounded), so the result does not depend on the
    order the events arrived in.
    """
    if agg == "count":
        return float(sum(1 for v in values if v is not None))
    nums = [v for v in values if isinstance(v, float)]
    if agg == "sum":
        return math.fsum(nums)
    if not nums:
        return None
    if agg == "mean":
        return math.fsum(nums) / len(nums)
    if agg == "min":
        return min(nums)
    if agg == "max":
        return max(nums)
    if agg == "stddev":
        mean = math.fsum(nums) / len(nums)
        return math.sqrt(math.fsum((x - mean) ** 2 for x in nums) / len(nums))
    raise FeatureDefinitionError(f"unknown aggregate {agg!r}")


def _ms(duration: str | None, default_ms: int | None = None) -> int:
    if duration is None:
        assert default_ms is not None
        return default_ms
    ms: int = round(parse_duration(duration) * 1000)
    return ms


@dataclass(frozen=True, slots=True)
class WindowDef:
    """One windowed feature, in integer milliseconds."""

    name: str
    field: str
    agg: str
    kind: str
    size_ms: int
    step_ms: int
    lateness_ms: int

    @classmethod
    def from_spec(cls, spec: WindowedFeature) -> WindowDef:
        size = _ms(spec.window.size)
        return cls(
            name=spec.name,
            field=spec.field,
            agg=spec.agg,
            kind=spec.window.type,
            size_ms=size,
            step_ms=_ms(spec.window.step, size),
            lateness_ms=_ms(spec.window.lateness),
        )

    def window_start(self, t_ms: int) -> int:
        """Start of the window of an event at ``t_ms``: the earliest-starting one containing it.

        Windows start at multiples of the step; ``[k*step, k*step + size)`` contains t for the
        smallest k with ``k*step + size > t``. With step > size, t may fall between windows; the
        start returned is then after t, and the window holds nothing at or before t.
        """
        k = (t_ms - self.size_ms) // self.step_ms + 1
        return k * self.step_ms


# ---------------------------------------------------------------------------------------------
# The whole feature set


@dataclass(frozen=True, slots=True)
class WindowedResult:
    """The windowed part of one event's vector."""

    values: dict[str, float | None]
    late_for: tuple[str, ...]  # windowed features the event was too late for
    duplicate: bool  # the event was already in the entity's state: values are the stored ones
    watermark_ms: int | None  # the entity's watermark before the event

    @property
    def late(self) -> bool:
        return bool(self.late_for)


class FeatureSet:
    """Compiled feature definitions of a project file (``project.features``).

    ``row(payload)`` gives the raw and derived features of one event (pure, stateless);
    ``apply(state, ...)`` folds one event into an entity's window state and returns the windowed
    features; ``vector(...)`` combines both in ``names`` order.
    """

    STATE_FORMAT = 1

    def __init__(self, spec: FeatureSpec, *, keep_last: int = 32, max_entries: int = 10_000) -> None:
        self.spec = spec
        self.version = spec.version
        self.names = spec.names
        self.raw = list(spec.raw)
        self.keep_last = keep_last
        self.max_entries = max_entries
        known = list(spec.raw)
        self._derived: list[tuple[str, Callable[[Row], Any], bool]] = []
        for d in spec.derived:
            try:
                if d.expr is not None:
                    self._derived.append((d.name, Expression(d.expr, known), False))
                else:
                    assert d.function is not None
                    self._derived.append((d.name, load_function(d.function), True))
            except FeatureDefinitionError as exc:
                raise FeatureDefinitionError(f"derived feature {d.name!r}: {exc}") from None
            known.append(d.name)
        self.windows = [WindowDef.from_spec(w) for w in spec.windows]
        for w in self.windows:
            if w.field not in known:
                raise FeatureDefinitionError(f"windowed feature {w.name!r}: unknown field {w.field!r}")
        # Distinct fields the windows aggregate, stored once per remembered event.
        self.window_fields = list(dict.fromkeys(w.field for w in self.windows))
        self._field_index = [self.window_fields.index(w.field) for w in self.windows]
        # Nothing older than watermark - horizon can be in a window an on-time event will see.
        self.horizon_ms = max((w.size_ms + w.lateness_ms for w in self.windows), default=0)
        layout = [[w.name, w.field, w.agg, w.size_ms, w.step_ms, w.lateness_ms] for w in self.windows]
        self.state_signature = hashlib.sha256(json.dumps(layout).encode()).hexdigest()[:16]
        self.function_errors: dict[str, int] = {}

    @property
    def stateful(self) -> bool:
        return bool(self.windows)

    # -- raw and derived ------------------------------------------------------------------

    def row(self, payload: Mapping[str, Any]) -> dict[str, FeatureValue]:
        out: dict[str, FeatureValue] = {name: to_feature_value(payload.get(name)) for name in self.raw}
        for name, fn, is_function in self._derived:
            if is_function:
                try:
                    out[name] = to_feature_value(fn(MappingProxyType(out)))
                except Exception:  # a user function's bug must not stop the stream
                    self.function_errors[name] = self.function_errors.get(name, 0) + 1
                    out[name] = None
            else:
                out[name] = fn(out)
        return out

    # -- windows --------------------------------------------------------------------------

    def new_state(self) -> dict[str, Any]:
        return {"format": self.STATE_FORMAT, "sig": self.state_signature, "wm": None, "from": None, "events": []}

    def state_is_current(self, state: Mapping[str, Any] | None) -> bool:
        return (
            state is not None and state.get("format") == self.STATE_FORMAT and state.get("sig") == self.state_signature
        )

    def apply(
        self, state: Mapping[str, Any] | None, event_id: str, event_time_ms: int, row: Row
    ) -> tuple[dict[str, Any] | None, WindowedResult]:
        """Fold one event into an entity's state.

        Returns the new state (None when unchanged: a duplicate) and the event's windowed values.
        The state is plain JSON: ``wm`` (watermark, ms), ``from`` (the state holds every on-time
        event at or after this time; None: since the beginning) and ``events``, each
        ``[event_time_ms, event_id, field values, late bitmask, windowed values emitted]``, kept
        while inside the horizon (longest window + its lateness), plus the last ``keep_last`` so
        that a re-delivered event is recognised even when event time has moved on.
        """
        if not self.state_is_current(state):
            state = self.new_state()
        assert state is not None
        events: list[list[Any]] = state["events"]
        for entry in events:
            if entry[1] == event_id:
                stored = dict(zip((w.name for w in self.windows), entry[4], strict=True))
                late_for = tuple(w.name for i, w in enumerate(self.windows) if entry[3] >> i & 1)
                return None, WindowedResult(stored, late_for, True, state["wm"])
        wm: int | None = state["wm"]
        complete_from: int | None = state["from"]
        t = event_time_ms
        fields = [_stored_value(row.get(f)) for f in self.window_fields]
        late_mask = 0
        if wm is not None:
            for i, w in enumerate(self.windows):
                if t < wm - w.lateness_ms:
                    late_mask |= 1 << i
        values: dict[str, float | None] = {}
        for i, w in enumerate(self.windows):
            start = w.window_start(t)
            if complete_from is not None and start < complete_from:
                values[w.name] = None  # part of this window is no longer kept (a very late event)
                continue
            fi = self._field_index[i]
            window = [e[2][fi] for e in events if start <= e[0] <= t and not e[3] >> i & 1]
            if not late_mask >> i & 1 and start <= t:
                window.append(fields[fi])
            values[w.name] = aggregate(w.agg, window)
        new_wm = t if wm is None else max(wm, t)
        entry = [t, event_id, fields, late_mask, [values[w.name] for w in self.windows]]
        kept = [*events, entry]
        if self.windows:
            cutoff = new_wm - self.horizon_ms
            complete_from = cutoff if complete_from is None else max(complete_from, cutoff)
            n = len(kept)
            kept = [e for i, e in enumerate(kept) if e[0] >= cutoff or i >= n - self.keep_last]
            if len(kept) > self.max_entries:  # a runaway entity: forget its oldest, say so
                dropped, kept = kept[: -self.max_entries], kept[-self.max_entries :]
                complete_from = max(complete_from, max(e[0] for e in dropped) + 1)
        new_state = {
            "format": self.STATE_FORMAT,
            "sig": self.state_signature,
            "wm": new_wm,
            "from": complete_from,
            "events": kept,
        }
        late_for = tuple(w.name for i, w in enumerate(self.windows) if late_mask >> i & 1)
        return new_state, WindowedResult(values, late_for, False, wm)

    def vector(self, row: Row, windowed: WindowedResult | None) -> dict[str, FeatureValue]:
        """Every feature in ``names`` order."""
        out: dict[str, FeatureValue] = dict(row)
        for w in self.windows:
            out[w.name] = windowed.values.get(w.name) if windowed is not None else None
        return {name: out.get(name) for name in self.names}


def _stored_value(value: FeatureValue) -> FeatureValue:
    return value if isinstance(value, float | str) else None
