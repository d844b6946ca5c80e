"""The offset guard: which records of events.raw the stream may process, strictly in offset
order per partition, whatever faust's consumer delivers (a pure decision on the remembered
progress; the stream reads the holes it names straight from the log)."""

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


@dataclass(frozen=True)
class Hole:
    """Offsets ``start`` (inclusive) to ``end`` (exclusive) of a partition that were not delivered."""

    partition: int
    start: int
    end: int


class OffsetGuard:
    """Admits records strictly in offset order per partition, from the next offset whose effect
    is not yet durable, whatever the consumer delivers.

    faust's consumer can, around a rebalance, skip records and still count them as done (it
    acknowledges records of a stale generation and treats offsets it did not deliver as gaps in
    the log), so its committed offsets alone cannot be trusted. The guard remembers, in a
    changelogged table, the next offset to process per partition. A record below it is a replay
    of durable work and is ignored. Offsets between it and a delivered record are a hole:
    :meth:`holes` names them, the stream reads them straight from the log (not through faust's
    consumer, whose read position a seek cannot reliably move back) and passes them to
    :meth:`admit` together with the batch. Offsets still missing then are really absent from the
    log (deleted by retention): the gap is accepted, and counted.
    """

    def __init__(self, offsets: PartitionOffsets) -> None:
        self.offsets = offsets
        # Next offset to admit: ahead of the table while admitted batches are not yet durable.
        self._next: dict[int, int | None] = {}

    def reset(self) -> None:
        """A new assignment: start again from the durable progress."""
        self._next.clear()

    def _expected(self, partition: int) -> int | None:
        if partition not in self._next:
            self._next[partition] = self.offsets.get(partition)
        return self._next[partition]

    def holes(self, records: Sequence[SourceRecord]) -> list[Hole]:
        """The offsets missing before (or between) the delivered records, per partition."""
        found: list[Hole] = []
        expected: dict[int, int | None] = {}
        for rec in sorted(records, key=lambda r: (r.partition, r.offset)):
            p, o = rec.partition, rec.offset
            nxt = expected[p] if p in expected else self._expected(p)
            if nxt is not None and o < nxt:
                continue
            if nxt is not None and o > nxt:
                found.append(Hole(p, nxt, o))
            expected[p] = o + 1
        return found

    def admit(self, records: Sequence[SourceRecord]) -> list[SourceRecord]:
        """The records to process, in offset order per partition: replays of durable work are
        dropped, and a gap still left (records absent from the log) is accepted and counted."""
        admitted: list[SourceRecord] = []
        for rec in sorted(records, key=lambda r: (r.partition, r.offset)):
            p, o = rec.partition, rec.offset
            nxt = self._expected(p)
            if nxt is not None and o < nxt:
                continue  # already durable (or admitted): a replay
            if nxt is not None and o > nxt:
                metrics.OFFSET_GAPS.inc()
                log.warning("offset_gap_accepted", partition=p, missing_from=nxt, missing_to=o - 1)
            admitted.append(rec)
            self._next[p] = o + 1
        return admitted

    def done(self, records: Sequence[SourceRecord]) -> None:
        """The records' effects are durable: remember where each partition continues."""
        last: dict[int, int] = {}
        for rec in records:
            last[rec.partition] = max(last.get(rec.partition, -1), rec.offset)
        for p, o in last.items():
            self.offsets.put(p, o + 1)
