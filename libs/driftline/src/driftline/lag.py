"""Consumer lag as a metric: ``driftline_consumer_lag{group,topic,partition}``, as kafka_exporter
names it (``kafka_consumergroup_lag``), so an alert or KEDA's Prometheus scaler can act on it.

Lag of a partition = its high watermark (the next offset the broker will write) minus the offset
the group has committed there (the next one it will process); without a commit yet, the
consumer's position. Each copy of a service reports the partitions assigned to it; summed over
copies (``sum by (group, topic)``) it is the group's lag.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable

from prometheus_client import Gauge

CONSUMER_LAG = Gauge(
    "driftline_consumer_lag",
    "Records not yet processed by the group: high watermark minus committed offset",
    ["group", "topic", "partition"],
)


class LagGauge:
    """Keeps one group's lag series in step with its assignment (revoked partitions are removed)."""

    def __init__(self, group: str, *, interval_s: float = 1.0) -> None:
        self.group = group
        self.interval_s = interval_s
        self._series: set[tuple[str, int]] = set()
        self._last = 0.0

    def due(self) -> bool:
        """Whether an update is due (updates are throttled to one per ``interval_s``)."""
        return time.monotonic() - self._last >= self.interval_s

    async def update(
        self,
        assigned: Iterable[tuple[str, int]],
        highwater: Callable[[str, int], int | None],
        done: Callable[[str, int], Awaitable[int | None]],
    ) -> dict[tuple[str, int], int]:
        """Set the lag of every assigned (topic, partition) whose high watermark is known;
        ``done`` gives the next offset to process there. Returns what it set."""
        self._last = time.monotonic()
        lags: dict[tuple[str, int], int] = {}
        for topic, partition in assigned:
            hw = highwater(topic, partition)
            if hw is None:
                continue  # nothing fetched from it yet
            next_offset = await done(topic, partition)
            if next_offset is None:
                continue
            lags[(topic, partition)] = max(0, hw - next_offset)
        for topic, partition in self._series - set(lags):
            CONSUMER_LAG.remove(self.group, topic, str(partition))
        for (topic, partition), lag in lags.items():
            CONSUMER_LAG.labels(self.group, topic, str(partition)).set(lag)
        self._series = set(lags)
        return lags

    def clear(self) -> None:
        for topic, partition in self._series:
            CONSUMER_LAG.remove(self.group, topic, str(partition))
        self._series = set()
