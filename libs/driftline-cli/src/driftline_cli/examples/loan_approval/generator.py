"""The example workload: a seeded loan-application stream in the style of the Agrawal generator.

Each application has salary, commission, age, education level, car, zip code, house value, years
the house is owned and the loan amount; one of the ten classic Agrawal functions decides whether
it is approved. The stream can switch function mid-stream (sudden or gradual concept drift) and
shift its inputs (covariate drift). Each item carries its ground truth; the closed-loop scenario
(``scenario.py``) publishes it a configurable number of events later, as labels arrive in
production. The stream is reproducible for a seed and a ``start`` time (by default three hours
before now, so that the events look recent).

    stream = LoanStream(seed=7, function=2)
    stream.schedule_concept_drift(at=3000, function=7)            # sudden
    stream.schedule_concept_drift(at=6000, function=1, width=500)  # gradual
    stream.schedule_covariate_shift(at=4000, field="salary", scale=1.4)
    for item in stream.take(8000):
        item.event   # the JSON an SDK/HTTP client sends
        item.label   # ground truth ("approve" / "deny"), to be sent after the delay
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

EVENT_TYPE = "loan_application"
APPROVE, DENY = "approve", "deny"

Row = dict[str, Any]


def _disposable(r: Row) -> float:
    return 2 / 3 * (r["salary"] + r["commission"])


def _equity(r: Row) -> float:
    return 0.1 * r["hvalue"] * max(r["hyears"] - 20, 0)


def _by_age(r: Row, young: bool, middle: bool, old: bool) -> bool:
    return young if r["age"] < 40 else middle if r["age"] < 60 else old


def _between(x: float, lo: float, hi: float) -> bool:
    return lo <= x <= hi


# The ten Agrawal classification functions (True = approve), numbered 1..10 as in the paper.
FUNCTIONS: dict[int, Callable[[Row], bool]] = {
    1: lambda r: r["age"] < 40 or r["age"] >= 60,
    2: lambda r: _by_age(
        r,
        _between(r["salary"], 50_000, 100_000),
        _between(r["salary"], 75_000, 125_000),
        _between(r["salary"], 25_000, 75_000),
    ),
    3: lambda r: _by_age(r, r["elevel"] in (0, 1), r["elevel"] in (1, 2, 3), r["elevel"] in (2, 3, 4)),
    4: lambda r: _by_age(
        r,
        _between(r["salary"], 25_000, 75_000) if r["elevel"] in (0, 1) else _between(r["salary"], 50_000, 100_000),
        _between(r["salary"], 50_000, 100_000) if r["elevel"] in (1, 2, 3) else _between(r["salary"], 75_000, 125_000),
        _between(r["salary"], 50_000, 100_000) if r["elevel"] in (2, 3, 4) else _between(r["salary"], 25_000, 75_000),
    ),
    5: lambda r: _by_age(
        r,
        _between(r["loan"], 100_000, 300_000)
        if _between(r["salary"], 50_000, 100_000)
        else _between(r["loan"], 200_000, 400_000),
        _between(r["loan"], 200_000, 400_000)
        if _between(r["salary"], 75_000, 125_000)
        else _between(r["loan"], 300_000, 500_000),
        _between(r["loan"], 300_000, 500_000)
        if _between(r["salary"], 25_000, 75_000)
        else _between(r["loan"], 100_000, 300_000),
    ),
    6: lambda r: _by_age(
        r,
        _between(r["salary"] + r["commission"], 50_000, 100_000),
        _between(r["salary"] + r["commission"], 75_000, 125_000),
        _between(r["salary"] + r["commission"], 25_000, 75_000),
    ),
    7: lambda r: _disposable(r) - r["loan"] / 5 - 20_000 > 0,
    8: lambda r: _disposable(r) - 5_000 * r["elevel"] - 20_000 > 0,
    9: lambda r: _disposable(r) - 5_000 * r["elevel"] - r["loan"] / 5 - 10_000 > 0,
    10: lambda r: _disposable(r) - 5_000 * r["elevel"] + _equity(r) / 5 - 10_000 > 0,
}


@dataclass
class Item:
    """One generated application: the event to publish and its (delayed) ground truth."""

    index: int
    event: dict[str, Any]
    label: str
    function: int

    @property
    def event_id(self) -> str:
        return str(self.event["event_id"])

    @property
    def entity_id(self) -> str:
        return str(self.event["payload"]["customer_id"])

    def label_record(self) -> dict[str, Any]:
        """The JSON a client sends to POST /v1/labels."""
        return {"event_id": self.event_id, "entity_id": self.entity_id, "label": self.label}


@dataclass
class _ConceptDrift:
    at: int
    function: int
    width: int


@dataclass
class _CovariateShift:
    at: int
    field: str
    scale: float
    offset: float


@dataclass
class LoanStream:
    seed: int = 7
    function: int = 2
    customers: int = 400
    start: datetime = field(default_factory=lambda: datetime.now(UTC) - timedelta(hours=3))
    seconds_per_event: float = 1.0
    noise: float = 0.0
    _drifts: list[_ConceptDrift] = field(default_factory=list)
    _shifts: list[_CovariateShift] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.function not in FUNCTIONS:
            raise ValueError(f"function must be 1..10, got {self.function}")
        self._rng = random.Random(self.seed)
        self._ids = random.Random(self.seed + 1)
        self.position = 0  # index of the next item

    def schedule_concept_drift(self, *, at: int, function: int, width: int = 0) -> LoanStream:
        """From event ``at`` on, labels follow ``function``; over ``width`` events when gradual."""
        if function not in FUNCTIONS:
            raise ValueError(f"function must be 1..10, got {function}")
        self._drifts.append(_ConceptDrift(at, function, width))
        self._drifts.sort(key=lambda d: d.at)
        return self

    def schedule_covariate_shift(self, *, at: int, field: str, scale: float = 1.0, offset: float = 0.0) -> LoanStream:
        """From event ``at`` on, ``field`` is multiplied by ``scale`` and moved by ``offset``."""
        self._shifts.append(_CovariateShift(at, field, scale, offset))
        return self

    def _function_at(self, i: int) -> int:
        current = self.function
        for d in self._drifts:
            if i < d.at:
                break
            if d.width and i < d.at + d.width:
                # Gradual: the new concept's share grows linearly across the width.
                if self._rng.random() < (i - d.at) / d.width:
                    current = d.function
            else:
                current = d.function
        return current

    def _row(self, i: int) -> Row:
        rng = self._rng
        salary = rng.uniform(20_000, 150_000)
        zipcode = rng.randrange(0, 9)
        row: Row = {
            "customer_id": f"cust-{rng.randrange(self.customers):05d}",
            "salary": salary,
            "commission": 0.0 if salary >= 75_000 else rng.uniform(10_000, 75_000),
            "age": rng.randrange(20, 81),
            "elevel": rng.randrange(0, 5),
            "car": rng.randrange(1, 21),
            "zipcode": zipcode,
            "hvalue": (9 - zipcode) * 100_000 * rng.uniform(0.5, 1.5),
            "hyears": rng.randrange(1, 31),
            "loan": rng.uniform(0, 500_000),
        }
        for s in self._shifts:
            if i >= s.at:
                value = row[s.field] * s.scale + s.offset
                row[s.field] = round(value) if isinstance(row[s.field], int) else value
        return row

    def take(self, n: int) -> Iterator[Item]:
        """The next ``n`` items; a later call continues the same stream."""
        for _ in range(n):
            yield self.next()

    def next(self) -> Item:
        i = self.position
        self.position += 1
        row = self._row(i)
        function = self._function_at(i)
        approved = FUNCTIONS[function](row)
        if self.noise and self._rng.random() < self.noise:
            approved = not approved
        event_time = self.start + timedelta(seconds=i * self.seconds_per_event)
        event = {
            "type": EVENT_TYPE,
            "event_id": str(uuid.UUID(int=self._ids.getrandbits(128), version=4)),
            "event_time": event_time.isoformat(),
            "payload": row,
        }
        return Item(i, event, APPROVE if approved else DENY, function)
