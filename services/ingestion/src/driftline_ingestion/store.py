"""The only state of ingestion: the event ids it accepted recently, kept in process memory.

A retried request (same ``event_id``) within the horizon is answered ``duplicate`` and not produced
again. An id whose first send is still waiting for the broker makes the retry wait for that send
instead of producing a second copy. The horizon is ``dedupe_horizon_s`` or the last
``dedupe_max_keys`` ids, whichever is shorter; a restart forgets everything, and a second replica
behind a load balancer has its own memory. Beyond that, Kafka's idempotent producer and sinks
keyed by ``event_id`` keep duplicates harmless downstream.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class Seen:
    """An accepted (or being accepted) id: ``acked`` resolves True when Kafka acknowledged it."""

    key: tuple[str, str]
    fingerprint: bytes
    expires_at: float
    acked: asyncio.Future[bool]


class IdempotencyKeys:
    def __init__(self, horizon_s: float, max_keys: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.horizon_s = horizon_s
        self.max_keys = max_keys
        self._clock = clock
        self._seen: OrderedDict[tuple[str, str], Seen] = OrderedDict()  # oldest first

    def __len__(self) -> int:
        return len(self._seen)

    def get(self, topic: str, event_id: str) -> Seen | None:
        entry = self._seen.get((topic, event_id))
        if entry is not None and entry.expires_at <= self._clock():
            self.forget(entry)
            return None
        return entry

    def reserve(self, topic: str, event_id: str, fingerprint: bytes, acked: asyncio.Future[bool]) -> Seen:
        now = self._clock()
        entry = Seen((topic, event_id), fingerprint, now + self.horizon_s, acked)
        self._seen[entry.key] = entry
        self._seen.move_to_end(entry.key)
        self._evict(now)
        return entry

    def forget(self, entry: Seen) -> None:
        """Drop an id (its send failed: a retry must be able to send it again)."""
        if self._seen.get(entry.key) is entry:
            del self._seen[entry.key]

    def _evict(self, now: float) -> None:
        seen = self._seen
        while seen:
            oldest = next(iter(seen.values()))
            if len(seen) <= self.max_keys and oldest.expires_at > now:
                return
            del seen[oldest.key]
