"""The training set of a run as a file: the exact examples a model was fitted and judged on.

One Parquet file per run (pyarrow), one row per example, in the order the run used them (the
training split oldest first, then the holdout oldest first):

========================  =========================================================================
column                    what
========================  =========================================================================
``example_id``            the raw event's id (the join key of its feature vector and its label)
``event_time``            the example's event time (UTC, microseconds)
``split``                 ``train`` or ``holdout``
``label``                 the label the run used
``label_event_id``        the ``labels`` record that label came from (a correction is a new record)
``label_time``            that label record's event time
``feature.<name>``        one column per feature of the vectors: float64 when every value is a
                          number (or missing), else text holding each value as JSON (the field's
                          metadata says ``encoding: json``)
========================  =========================================================================

The schema's metadata holds the format version and the feature-set version. The bytes are a
function of the rows alone (fixed column order, fixed compression, no timestamps of writing), so
the same examples give the same file and its SHA-256 is the run's dataset fingerprint.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from driftline_ml.models import to_matrix

FORMAT = "driftline-training-set/1"
FEATURE_PREFIX = "feature."
SPLITS = ("train", "holdout")
CONTENT_TYPE = "application/vnd.apache.parquet"


class TrainingSetError(ValueError):
    """A file that is not a training set this module wrote (or a newer format of one)."""


@dataclass(frozen=True, slots=True)
class TrainingRow:
    """One example of a training set (what :class:`driftline_training.pipeline.Example` holds)."""

    example_id: str
    event_time: datetime
    features: Mapping[str, Any]
    label: str
    label_event_id: str | None = None
    label_time: datetime | None = None


@dataclass
class TrainingSet:
    """A training set as read back: its two splits in the recorded order."""

    train: list[TrainingRow]
    holdout: list[TrainingRow]
    feature_set_version: str
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def rows(self) -> list[TrainingRow]:
        return [*self.train, *self.holdout]

    def time_range(self) -> tuple[datetime, datetime] | None:
        rows = self.rows
        if not rows:
            return None
        return min(r.event_time for r in rows), max(r.event_time for r in rows)


def number(value: Any) -> Any:
    """Numbers pass; numeric strings become floats; anything else is left for to_matrix to refuse."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def model_matrix(rows: Iterable[TrainingRow | Any], names: Sequence[str]) -> np.ndarray:
    """The model's input matrix of rows (anything with ``features``): the one place that turns a
    training example into model input, for training and for reproducing it (ValueError on a value
    that is not a number)."""
    return to_matrix(({n: number(r.features.get(n)) for n in names} for r in rows), names)


def _is_number(value: Any) -> bool:
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


def write_training_set(
    train: Sequence[TrainingRow | Any], holdout: Sequence[TrainingRow | Any], *, feature_set_version: str
) -> bytes:
    """The Parquet bytes of a run's examples (rows: anything with TrainingRow's attributes)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [*train, *holdout]
    names = sorted({name for r in rows for name in r.features})
    columns: dict[str, Any] = {
        "example_id": pa.array([r.example_id for r in rows], pa.string()),
        "event_time": pa.array([r.event_time for r in rows], pa.timestamp("us", tz="UTC")),
        "split": pa.array(["train"] * len(train) + ["holdout"] * len(holdout), pa.string()),
        "label": pa.array([str(r.label) for r in rows], pa.string()),
        "label_event_id": pa.array([getattr(r, "label_event_id", None) for r in rows], pa.string()),
        "label_time": pa.array([getattr(r, "label_time", None) for r in rows], pa.timestamp("us", tz="UTC")),
    }
    fields = [pa.field(name, arr.type) for name, arr in columns.items()]
    for name in names:
        values = [r.features.get(name) for r in rows]
        column = FEATURE_PREFIX + name
        if all(_is_number(v) for v in values):
            columns[column] = pa.array([None if v is None else float(v) for v in values], pa.float64())
            fields.append(pa.field(column, pa.float64()))
        else:
            encoded = [None if v is None else json.dumps(v, sort_keys=True) for v in values]
            columns[column] = pa.array(encoded, pa.string())
            fields.append(pa.field(column, pa.string(), metadata={"encoding": "json"}))
    schema = pa.schema(fields, metadata={"format": FORMAT, "feature_set_version": feature_set_version})
    table = pa.Table.from_arrays(list(columns.values()), schema=schema)
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd", use_dictionary=False, write_statistics=True)
    return sink.getvalue()


def read_training_set(data: bytes) -> TrainingSet:
    """A training set from its Parquet bytes (check the bytes' SHA-256 before: the artifact store
    does, given the recorded digest)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, OSError) as exc:
        raise TrainingSetError(f"not a Parquet file: {exc}") from None
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    if meta.get("format") != FORMAT:
        raise TrainingSetError(f"not a training set of format {FORMAT} (format {meta.get('format')!r})")
    feature_columns = [f for f in table.schema if f.name.startswith(FEATURE_PREFIX)]
    cols = {name: table.column(name).to_pylist() for name in table.column_names}
    decoded: dict[str, list[Any]] = {}
    for f in feature_columns:
        values = cols[f.name]
        if (f.metadata or {}).get(b"encoding") == b"json":
            values = [None if v is None else json.loads(v) for v in values]
        decoded[f.name[len(FEATURE_PREFIX) :]] = values
    out = TrainingSet([], [], meta.get("feature_set_version", ""), meta)
    for i, split in enumerate(cols["split"]):
        if split not in SPLITS:
            raise TrainingSetError(f"row {i}: split {split!r} is not one of {SPLITS}")
        row = TrainingRow(
            example_id=cols["example_id"][i],
            event_time=cols["event_time"][i],
            features={name: values[i] for name, values in decoded.items() if values[i] is not None},
            label=cols["label"][i],
            label_event_id=cols["label_event_id"][i],
            label_time=cols["label_time"][i],
        )
        (out.train if split == "train" else out.holdout).append(row)
    return out
