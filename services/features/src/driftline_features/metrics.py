"""Prometheus metrics of the features service (served on /metrics with the platform's own)."""

from __future__ import annotations

import time
from collections import deque

from prometheus_client import Counter, Gauge, Histogram

EVENTS = Counter(
    "driftline_features_events_total",
    "Raw events handled, by outcome (computed, duplicate: already in the entity state, dead_lettered)",
    ["outcome"],
)
LATE_EVENTS = Counter(
    "driftline_features_late_events_total", "Events older than watermark - lateness: windows not updated"
)
EVENTS_PER_SECOND = Gauge("driftline_features_events_per_second", "Events handled per second over the last 10 s")
CONSUMER_LAG = Gauge("driftline_features_consumer_lag", "Records behind the end of events.raw", ["partition"])
EVENT_TIME_LAG = Gauge(
    "driftline_features_event_time_lag_seconds", "Now minus the event time of the last event handled"
)
STORE_WRITE_SECONDS = Histogram(
    "driftline_features_store_write_seconds",
    "Online-store write of one batch (one statement: insert + upsert)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
BATCH_SECONDS = Histogram(
    "driftline_features_batch_seconds",
    "Compute, produce, store and acknowledge one batch",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
RETRIES = Counter("driftline_features_batch_retries_total", "Batches retried after a transient failure")
FUNCTION_ERRORS = Counter(
    "driftline_features_function_errors_total", "Derived-feature functions that raised (value None)", ["feature"]
)

OFFSET_HOLES = Counter(
    "driftline_features_offset_holes_total", "Holes in the delivered offsets, read straight from the log to fill them"
)
OFFSET_HOLE_RECORDS = Counter(
    "driftline_features_offset_hole_records_total", "Records read from the log to fill holes in the delivered offsets"
)
OFFSET_GAPS = Counter(
    "driftline_features_offset_gaps_total", "Gaps accepted because the records are absent from the log (retention)"
)

_WINDOW_S = 10.0
_recent: deque[tuple[float, int]] = deque()


def _trim(now: float) -> None:
    while _recent and _recent[0][0] < now - _WINDOW_S:
        _recent.popleft()


def events_per_second() -> float:
    """Events handled in the last 10 seconds, per second (computed when scraped)."""
    _trim(time.monotonic())
    return sum(n for _, n in _recent) / _WINDOW_S


def observe_batch(n: int) -> None:
    now = time.monotonic()
    _recent.append((now, n))
    _trim(now)


EVENTS_PER_SECOND.set_function(events_per_second)
