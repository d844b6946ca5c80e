"""The offset guard: which records of events.raw the stream may process, strictly in offset
order per partition, whatever faust's consumer delivers (a pure decision on the remembered
progress; the stream makes the seeks it asks for)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from driftline.logging import get_logger
from driftline_features import metrics
from driftline_features.handlers import SourceRecord

log = get_logger(__name__)


class PartitionOffsets(Protocol):
    """Next offset to process per source partition, once durable (a faust table in the service)."""

    def get(self, partition: int) -> int | None: ...

    def put(self, partition: int, next_offset: int) -> None: ...


@dataclass
class _Seeking:
    target: int
    since: float
    attempts: int = 1


class OffsetGuard:
    """Admits records strictly in offset order per partition, from the next offset whose effect
    is not yet durable, whatever the consumer delivers.

    faust's consumer can, around a rebalance, skip records and still count them as done (it
    acknowledges records of a stale generation and treats offsets it did not deliver as gaps in
    the log), so its committed offsets alone cannot be trusted. The guard remembers, in a
    changelogged table, the next offset to process per partition. A record below it is a replay
    of durable work and is ignored; a record above it means records were skipped: the partition
    is sought back and nothing after the hole is processed until the hole is filled. A hole that
    stays (records really absent from the log, e.g. deleted by retention) is accepted after a few
    seeks, and logged.
    """

    def __init__(self, offsets: PartitionOffsets, *, reseek_after_s: float = 5.0, max_attempts: int = 3) -> None:
        self.offsets = offsets
        self.reseek_after_s = reseek_after_s
        self.max_attempts = max_attempts
        self._seeking: dict[int, _Seeking] = {}
        # Next offset to admit: ahead of the table while admitted batches are not yet durable.
        self._next: dict[int, int | None] = {}

    def reset(self) -> None:
        """A new assignment: the consumer was sought to the committed offsets anyway."""
        self._seeking.clear()
        self._next.clear()

    def admit(self, records: Sequence[SourceRecord], now: float) -> tuple[list[SourceRecord], dict[int, int]]:
        """Records to process (in order), and the seeks to make (partition → offset)."""
        admitted: list[SourceRecord] = []
        seeks: dict[int, int] = {}
        expected = self._next
        for rec in records:
            p, o = rec.partition, rec.offset
            if p not in expected:
                expected[p] = self.offsets.get(p)
            seeking = self._seeking.get(p)
            if seeking is not None:
                if o == seeking.target:
                    del self._seeking[p]
                elif o < seeking.target:
                    continue
                elif now - seeking.since < self.reseek_after_s:
                    continue  # records fetched before the seek, still in the buffers
                elif seeking.attempts < self.max_attempts:
                    seeks[p] = self._reseek(p, seeking, now)
                    continue
                else:
                    del self._seeking[p]
                    metrics.OFFSET_GAPS.inc()
                    log.warning("offset_gap_accepted", partition=p, missing_from=seeking.target, missing_to=o - 1)
            else:
                nxt = expected[p]
                if nxt is not None and o < nxt:
                    continue  # already durable: a replay
                if nxt is not None and o > nxt:
                    self._seeking[p] = _Seeking(nxt, now)
                    seeks[p] = nxt
                    metrics.OFFSET_SEEKS.inc()
                    log.warning("offset_hole_seeking_back", partition=p, expected=nxt, got=o)
                    continue
            admitted.append(rec)
            expected[p] = o + 1
        return admitted, seeks

    def due_reseeks(self, now: float) -> dict[int, int]:
        """Seeks to repeat now, whether or not records arrive: a seek can be undone by the
        consumer's fetch loop (records it had fetched before the seek move its read position past
        the target again, and then it drops the re-fetched ones), and with no new records after
        the hole nothing else would notice."""
        return {
            p: self._reseek(p, seeking, now)
            for p, seeking in list(self._seeking.items())
            if now - seeking.since >= self.reseek_after_s and seeking.attempts < self.max_attempts
        }

    def _reseek(self, partition: int, seeking: _Seeking, now: float) -> int:
        seeking.attempts += 1
        seeking.since = now
        log.warning("offset_hole_seeking_again", partition=partition, target=seeking.target, attempt=seeking.attempts)
        return seeking.target

    def done(self, records: Sequence[SourceRecord]) -> None:
        """The records' effects are durable: remember where each partition continues."""
        last: dict[int, int] = {}
        for rec in records:
            last[rec.partition] = max(last.get(rec.partition, -1), rec.offset)
        for p, o in last.items():
            self.offsets.put(p, o + 1)
