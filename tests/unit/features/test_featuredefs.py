"""Feature definitions: the safe expression evaluator, aggregates, window math and entity state."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from driftline.project import FeatureSpec, load_project
from driftline_ml.featuredefs import (
    Expression,
    FeatureDefinitionError,
    FeatureSet,
    WindowDef,
    aggregate,
    load_function,
)

MIN = 60_000
T0 = 1_735_725_600_000  # 2025-01-01T10:00:00Z, aligned on the hour


def spec(windows: list[dict[str, Any]], derived: list[dict[str, Any]] | None = None) -> FeatureSpec:
    return FeatureSpec.model_validate(
        {"version": "t1", "raw": ["loan", "salary", "kind"], "derived": derived or [], "windows": windows}
    )


WINDOWS = [
    {"name": "n_1h", "field": "loan", "agg": "count", "window": {"size": "1h", "lateness": "10m"}},
    {"name": "sum_1h", "field": "loan", "agg": "sum", "window": {"size": "1h", "lateness": "10m"}},
    {"name": "mean_1h", "field": "loan", "agg": "mean", "window": {"size": "1h", "lateness": "10m"}},
    {"name": "min_1h", "field": "loan", "agg": "min", "window": {"size": "1h", "lateness": "10m"}},
    {"name": "std_1h", "field": "loan", "agg": "stddev", "window": {"size": "1h", "lateness": "10m"}},
    {
        "name": "max_30m",
        "field": "loan",
        "agg": "max",
        "window": {"type": "hopping", "size": "30m", "step": "10m", "lateness": "10m"},
    },
]


# -- expressions --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "row", "expected"),
    [
        ("a + b * 2", {"a": 1.0, "b": 3.0}, 7.0),
        ("(a + b) * 2", {"a": 1.0, "b": 3.0}, 8.0),
        ("-a ** 2", {"a": 3.0}, -9.0),
        ("a / b", {"a": 1.0, "b": 4.0}, 0.25),
        ("a % 3", {"a": 10.0}, 1.0),
        ("max(a - 20, 0) * 0.1", {"a": 25.0}, 0.5),
        ("min(a, b, 2)", {"a": 5.0, "b": 3.0}, 2.0),
        ("abs(a) + sqrt(b)", {"a": -2.0, "b": 9.0}, 5.0),
        ("log(a, 10)", {"a": 1000.0}, pytest.approx(3.0)),
        ("log(exp(a))", {"a": 2.0}, pytest.approx(2.0)),
        ("floor(a) + ceil(b)", {"a": 1.5, "b": 1.5}, 3.0),
        ("a + 1", {"a": True}, 2.0),
        ("a + 1", {"a": 4}, 5.0),
    ],
)
def test_expressions_compute_arithmetic(text: str, row: dict[str, Any], expected: Any) -> None:
    assert Expression(text)(row) == expected


@pytest.mark.parametrize(
    ("text", "row"),
    [
        ("a / b", {"a": 1.0, "b": 0.0}),  # division by zero
        ("a % b", {"a": 1.0, "b": 0.0}),
        ("log(a)", {"a": 0.0}),  # outside the domain
        ("sqrt(a)", {"a": -1.0}),
        ("a ** (1 / 3)", {"a": -8.0}),  # complex result
        ("exp(a)", {"a": 1e6}),  # overflow
        ("a * a", {"a": 1e300}),  # inf
        ("a + 1", {}),  # missing
        ("a + 1", {"a": None}),
        ("a + 1", {"a": "text"}),  # not a number
        ("max(a, b)", {"a": 1.0}),
    ],
)
def test_expressions_give_none_when_not_computable(text: str, row: dict[str, Any]) -> None:
    assert Expression(text)(row) is None


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os').system('true')",
        "a.__class__",
        "open('/etc/passwd')",
        "(lambda: 1)()",
        "a if a else b",
        "a < b",
        "[a][0]",
        "'text'",
        "True + a",
        "max(a, key=b)",
        "max(*a)",
        "sqrt(a, b)",
        "min()",
        "a +",
        "unknown_name + 1",
    ],
)
def test_expressions_refuse_anything_outside_the_whitelist(text: str) -> None:
    with pytest.raises(FeatureDefinitionError):
        Expression(text, ["a", "b"])


def test_load_function_imports_module_colon_name() -> None:
    assert load_function("math:fsum") is math.fsum
    for bad in ("math", "math:", "no_such_module_x:f", "math:no_such_function", "math:pi"):
        with pytest.raises(FeatureDefinitionError):
            load_function(bad)


# -- aggregates and windows --------------------------------------------------------------------


def test_aggregates() -> None:
    xs: list[Any] = [2.0, 4.0, None, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0, "text"]
    assert aggregate("count", xs) == 9.0  # non-null, text included
    assert aggregate("sum", xs) == 40.0
    assert aggregate("mean", xs) == 5.0
    assert aggregate("min", xs) == 2.0
    assert aggregate("max", xs) == 9.0
    assert aggregate("stddev", xs) == 2.0  # population standard deviation
    assert aggregate("stddev", [3.0]) == 0.0
    assert [aggregate(a, []) for a in ("count", "sum", "mean", "min", "max", "stddev")] == [
        0.0,
        0.0,
        None,
        None,
        None,
        None,
    ]


def test_sums_do_not_depend_on_arrival_order() -> None:
    xs = [0.1] * 10 + [1e16, -1e16]
    assert aggregate("sum", xs) == aggregate("sum", list(reversed(xs))) == pytest.approx(1.0)


def test_window_start_is_the_earliest_window_holding_the_time() -> None:
    tumbling = WindowDef("w", "f", "sum", "tumbling", 60 * MIN, 60 * MIN, 0)
    assert tumbling.window_start(T0) == T0
    assert tumbling.window_start(T0 + 59 * MIN) == T0
    assert tumbling.window_start(T0 + 60 * MIN) == T0 + 60 * MIN
    assert tumbling.window_start(-1) == -60 * MIN
    hopping = WindowDef("w", "f", "max", "hopping", 30 * MIN, 10 * MIN, 0)
    assert hopping.window_start(T0 + 5 * MIN) == T0 - 20 * MIN  # [9:40, 10:10)
    assert hopping.window_start(T0 + 20 * MIN) == T0  # [10:00, 10:30): 10:30 excluded
    assert hopping.window_start(T0 + 30 * MIN) == T0 + 10 * MIN
    gappy = WindowDef("w", "f", "max", "hopping", 10 * MIN, 30 * MIN, 0)
    assert gappy.window_start(T0 + 5 * MIN) == T0
    assert gappy.window_start(T0 + 15 * MIN) > T0 + 15 * MIN  # between windows


# -- rows ---------------------------------------------------------------------------------------


def double_loan(row: Any) -> float:
    return float(row["loan"]) * 2


def broken(row: Any) -> float:
    raise RuntimeError("bug in a user function")


def test_rows_hold_raw_and_derived_features_in_order() -> None:
    fs = FeatureSet(
        spec(
            [],
            derived=[
                {"name": "ratio", "expr": "loan / salary"},
                {"name": "ratio_pct", "expr": "ratio * 100"},
                {"name": "twice", "function": "tests.unit.features.test_featuredefs:double_loan"},
                {"name": "oops", "function": "tests.unit.features.test_featuredefs:broken"},
            ],
        )
    )
    row = fs.row({"loan": 50, "salary": 200.0, "kind": "a", "extra": 1})
    assert row == {
        "loan": 50.0,
        "salary": 200.0,
        "kind": "a",
        "ratio": 0.25,
        "ratio_pct": 25.0,
        "twice": 100.0,
        "oops": None,
    }
    assert fs.function_errors == {"oops": 1}
    assert fs.row({"loan": 1.0, "salary": 0.0})["ratio"] is None
    assert fs.row({})["loan"] is None


def test_definitions_are_checked_when_compiled() -> None:
    with pytest.raises(FeatureDefinitionError, match="later"):
        FeatureSet(spec([], derived=[{"name": "a", "expr": "later + 1"}, {"name": "later", "expr": "loan"}]))
    with pytest.raises(FeatureDefinitionError, match="unknown field"):
        FeatureSet(spec([{"name": "w", "field": "nope", "agg": "sum", "window": {"size": "1h"}}]))


def test_the_example_project_compiles() -> None:
    fs = FeatureSet(load_project().features)
    assert fs.names[-2:] == ["applications_1h", "loan_mean_1h"]
    assert fs.horizon_ms == 65 * MIN


# -- entity state -------------------------------------------------------------------------------


class Entity:
    """Feeds events of one entity through FeatureSet.apply like the service does."""

    def __init__(self, fs: FeatureSet) -> None:
        self.fs = fs
        self.state: dict[str, Any] | None = None

    def send(self, event_id: str, minute: float, loan: float | None) -> Any:
        new, result = self.fs.apply(self.state, event_id, T0 + int(minute * MIN), {"loan": loan})
        if new is not None:
            self.state = new
        return result


def test_hand_computed_sequence_with_out_of_order_late_and_duplicate_events() -> None:
    e = Entity(FeatureSet(spec(WINDOWS)))
    r1 = e.send("e1", 5, 100.0)
    assert r1.values == {
        "n_1h": 1.0,
        "sum_1h": 100.0,
        "mean_1h": 100.0,
        "min_1h": 100.0,
        "std_1h": 0.0,
        "max_30m": 100.0,
    }
    r2 = e.send("e2", 20, 300.0)
    assert r2.values == {
        "n_1h": 2.0,
        "sum_1h": 400.0,
        "mean_1h": 200.0,
        "min_1h": 100.0,
        "std_1h": 100.0,
        "max_30m": 300.0,
    }
    r3 = e.send("e3", 50, 200.0)
    assert r3.values["n_1h"] == 3.0 and r3.values["sum_1h"] == 600.0
    assert r3.values["std_1h"] == pytest.approx(math.sqrt(20000 / 3))
    assert r3.values["max_30m"] == 200.0  # [10:30, 11:00)
    # Out of order, within the lateness: sees e1, e2 and itself, not e3 (10:50 is after 10:40).
    r4 = e.send("e4", 40, 50.0)
    assert not r4.late
    assert r4.values == {
        "n_1h": 3.0,
        "sum_1h": 450.0,
        "mean_1h": 150.0,
        "min_1h": 50.0,
        "std_1h": pytest.approx(108.0123),
        "max_30m": 300.0,
    }
    r5 = e.send("e5", 62, 400.0)  # the next hour
    assert r5.values["n_1h"] == 1.0 and r5.values["sum_1h"] == 400.0
    assert r5.values["max_30m"] == 400.0  # [10:40, 11:10): e3, e4, e5
    # Late: 10:30 < watermark 11:02 - 10m. Not counted; its own values as the windows stood.
    r6 = e.send("e6", 30, 999.0)
    assert r6.late and r6.late_for == tuple(w["name"] for w in WINDOWS)
    assert r6.values["n_1h"] == 2.0 and r6.values["sum_1h"] == 400.0 and r6.values["max_30m"] == 300.0
    # A re-delivery of e3: same values as the first time, nothing counted twice.
    r7 = e.send("e3", 50, 200.0)
    assert r7.duplicate and r7.values == r3.values
    r8 = e.send("e8", 70, 10.0)
    assert r8.values == {
        "n_1h": 2.0,
        "sum_1h": 410.0,
        "mean_1h": 205.0,
        "min_1h": 10.0,
        "std_1h": 195.0,
        "max_30m": 400.0,
    }
    # The late event e6 is remembered (a re-delivery is recognised) but never counted.
    assert e.send("e6", 30, 999.0).duplicate


def test_state_is_bounded_by_the_horizon_plus_the_last_few() -> None:
    e = Entity(FeatureSet(spec(WINDOWS[:1]), keep_last=3))
    for i in range(500):
        e.send(f"e{i}", i * 10, 1.0)  # one event every 10 minutes, horizon 70 minutes
    assert e.state is not None
    assert len(e.state["events"]) == 8  # those inside the 70-minute horizon: minutes 4920 to 4990
    assert e.send("e499", 4990, 1.0).duplicate


def test_redelivery_is_recognised_after_time_jumps_beyond_the_horizon() -> None:
    e = Entity(FeatureSet(spec(WINDOWS[:1]), keep_last=2))
    first = e.send("a", 0, 1.0)
    e.send("b", 600, 1.0)  # ten hours later: "a" is outside the horizon, kept as one of the last 2
    again = e.send("a", 0, 1.0)
    assert again.duplicate and again.values == first.values


def test_a_very_late_event_gets_none_rather_than_a_partial_window() -> None:
    e = Entity(FeatureSet(spec(WINDOWS[:2]), keep_last=0))
    e.send("a", 0, 1.0)
    e.send("b", 5, 1.0)
    e.send("c", 300, 1.0)  # five hours later: a and b forgotten
    r = e.send("d", 10, 1.0)
    assert r.late and r.values == {"n_1h": None, "sum_1h": None}


def test_runaway_entity_is_capped_and_its_windows_become_none() -> None:
    e = Entity(FeatureSet(spec(WINDOWS[:1]), max_entries=5))
    for i in range(6):
        e.send(f"e{i}", i / 10, 1.0)
    assert e.state is not None and len(e.state["events"]) == 5
    assert e.send("e6", 1, 1.0).values["n_1h"] is None


def test_state_of_other_definitions_is_discarded() -> None:
    old = Entity(FeatureSet(spec(WINDOWS[:1])))
    old.send("a", 0, 1.0)
    new = FeatureSet(spec([{**WINDOWS[0], "window": {"size": "2h", "lateness": "10m"}}]))
    state, result = new.apply(old.state, "b", T0 + MIN, {"loan": 1.0})
    assert result.values["n_1h"] == 1.0 and state is not None and len(state["events"]) == 1


def test_vector_has_every_feature_in_order() -> None:
    fs = FeatureSet(spec(WINDOWS[:1], derived=[{"name": "twice", "expr": "loan * 2"}]))
    row = fs.row({"loan": 3.0})
    _, windowed = fs.apply(None, "a", T0, row)
    assert list(fs.vector(row, windowed).items()) == [
        ("loan", 3.0),
        ("salary", None),
        ("kind", None),
        ("twice", 6.0),
        ("n_1h", 1.0),
    ]


# -- point-in-time correctness against a brute-force definition ----------------------------------


def brute_force(fs: FeatureSet, events: list[tuple[str, int, float]]) -> list[dict[str, float | None]]:
    """The README's definition, computed from the whole history: no state, no pruning."""
    out = []
    for i, (_, t, _v) in enumerate(events):
        wm = max((tj for _, tj, _ in events[:i]), default=None)
        values: dict[str, float | None] = {}
        for w in fs.windows:
            start = w.window_start(t)

            def on_time(j: int, w: WindowDef = w) -> bool:
                prior = max((tk for _, tk, _ in events[:j]), default=None)
                return prior is None or events[j][1] >= prior - w.lateness_ms

            window = [events[j][2] for j in range(i) if start <= events[j][1] <= t and on_time(j)]
            late = wm is not None and t < wm - w.lateness_ms
            if not late and start <= t:
                window.append(events[i][2])
            values[w.name] = aggregate(w.agg, window)
        out.append(values)
    return out


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(min_value=0, max_value=300), st.floats(min_value=-1e6, max_value=1e6)),
        min_size=1,
        max_size=40,
    )
)
def test_windowed_values_match_the_definition_whatever_the_arrival_order(raw: list[tuple[int, float]]) -> None:
    fs = FeatureSet(spec(WINDOWS), keep_last=0)
    events = [(f"e{i}", T0 + minute * MIN, value) for i, (minute, value) in enumerate(raw)]
    expected = brute_force(fs, events)
    state: dict[str, Any] | None = None
    for (event_id, t, value), want in zip(events, expected, strict=True):
        new, result = fs.apply(state, event_id, t, {"loan": value})
        state = new or state
        for name, got in result.values.items():
            if got is None and want[name] is not None:
                assert result.late, (name, "only a very late event may lack a value")
                continue
            if want[name] is None:
                assert got is None, (event_id, name)
            else:
                assert got == pytest.approx(want[name], rel=1e-9, abs=1e-6), (event_id, name)
