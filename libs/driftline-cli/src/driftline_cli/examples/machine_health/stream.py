"""A seeded stream of ``machine_reading`` events (examples/machine_health/project.yaml) with their
labels: will the machine fail within its shift?

Readings of ``machines`` machines on four lines: bearing temperature, RMS vibration, hydraulic
pressure and spindle speed. A reading's outcome is ``failure`` when its wear score is above a
threshold, else ``ok``, with ``noise`` of the labels flipped. Two concepts: ``A`` (heat and
vibration wear the bearing) and ``B`` (after a maintenance change: pressure and speed wear it);
:meth:`MachineStream.drift` switches from A to B at once.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

EVENT_TYPE = "machine_reading"
START = datetime(2026, 3, 2, 6, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Reading:
    event_id: str
    event_time: datetime
    payload: dict[str, Any]
    label: str

    @property
    def event(self) -> dict[str, Any]:
        return {
            "type": EVENT_TYPE,
            "event_id": self.event_id,
            "event_time": self.event_time.isoformat(),
            "payload": self.payload,
        }

    def label_record(self) -> dict[str, Any]:
        return {"event_id": self.event_id, "entity_id": self.payload["machine_id"], "label": self.label}


class MachineStream:
    def __init__(self, seed: int = 1, machines: int = 120, noise: float = 0.03, seconds_apart: float = 10.0) -> None:
        self.rng = np.random.default_rng(seed)
        self.machines = machines
        self.noise = noise
        self.seconds_apart = seconds_apart
        self.concept = "A"
        self.position = 0

    def drift(self) -> None:
        """From now on, concept B."""
        self.concept = "B"

    def _wear(self, t: float, v: float, p: float, rpm: float) -> float:
        if self.concept == "A":
            return 0.09 * (t - 62.0) + 1.1 * (v - 2.8)
        return 0.03 * (p - 125.0) + 0.004 * (rpm - 1400.0)

    def next(self) -> Reading:
        rng = self.rng
        machine = int(rng.integers(self.machines))
        line = machine % 4 + 1
        temperature = float(rng.normal(58.0 + 2.0 * line, 7.0))
        vibration = float(rng.lognormal(1.0, 0.35))
        pressure = float(rng.normal(125.0, 18.0))
        rpm = float(rng.uniform(800.0, 2000.0))
        failed = self._wear(temperature, vibration, pressure, rpm) > 0.9
        if rng.random() < self.noise:
            failed = not failed
        at = START + timedelta(seconds=self.position * self.seconds_apart)
        self.position += 1
        payload = {
            "machine_id": f"m-{machine:03d}",
            "temperature": round(temperature, 2),
            "vibration": round(vibration, 3),
            "pressure": round(pressure, 1),
            "rpm": round(rpm, 0),
            "line": line,
        }
        event_id = str(uuid.UUID(int=int(rng.integers(2**62)) << 64 | self.position, version=4))
        return Reading(event_id, at, payload, "failure" if failed else "ok")

    def take(self, n: int) -> Iterator[Reading]:
        for _ in range(n):
            yield self.next()
