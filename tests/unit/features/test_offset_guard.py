"""The offset guard: records strictly in order per partition, whatever the consumer delivers."""

from __future__ import annotations

from driftline_features.handlers import SourceRecord
from driftline_features.offset_guard import Hole, OffsetGuard


class Offsets:
    def __init__(self, **start: int) -> None:
        self.next = {int(k[1:]): v for k, v in start.items()}

    def get(self, partition: int) -> int | None:
        return self.next.get(partition)

    def put(self, partition: int, next_offset: int) -> None:
        self.next[partition] = next_offset


def recs(partition: int, *offsets: int) -> list[SourceRecord]:
    return [SourceRecord("t.events.raw", partition, o, None, b"", 0) for o in offsets]


def offsets_of(records: list[SourceRecord]) -> list[tuple[int, int]]:
    return [(r.partition, r.offset) for r in records]


def test_in_order_records_pass_and_progress_is_remembered() -> None:
    offsets = Offsets(p0=10)
    guard = OffsetGuard(offsets)
    batch = [*recs(0, 10, 11, 12), *recs(1, 0, 1)]
    assert guard.holes(batch) == []
    admitted = guard.admit(batch)
    assert offsets_of(admitted) == [(0, 10), (0, 11), (0, 12), (1, 0), (1, 1)]
    guard.done(admitted)
    assert offsets.next == {0: 13, 1: 2}


def test_replays_of_durable_work_are_ignored() -> None:
    guard = OffsetGuard(Offsets(p0=12))
    batch = recs(0, 10, 11, 12, 13)
    assert guard.holes(batch) == []
    assert offsets_of(guard.admit(batch)) == [(0, 12), (0, 13)]


def test_holes_before_and_between_delivered_records_are_named_per_partition() -> None:
    guard = OffsetGuard(Offsets(p0=144, p1=5))
    batch = [*recs(0, 149, 150, 155), *recs(1, 5, 6), *recs(2, 40)]
    assert guard.holes(batch) == [Hole(0, 144, 149), Hole(0, 151, 155)]


def test_records_read_for_a_hole_are_admitted_in_offset_order_with_the_batch() -> None:
    offsets = Offsets(p0=144)
    guard = OffsetGuard(offsets)
    batch = [*recs(0, 149, 150, 155), *recs(1, 5)]
    filled = [*recs(0, 144, 145, 146, 147, 148), *recs(0, 151, 152, 153, 154)]
    admitted = guard.admit(batch + filled)
    assert offsets_of(admitted) == [(0, o) for o in range(144, 156)] + [(1, 5)]
    guard.done(admitted)
    assert offsets.get(0) == 156
    assert guard.holes(recs(0, 156, 157)) == []  # the next batch goes on from there


def test_a_hole_the_log_no_longer_holds_is_accepted_once() -> None:
    guard = OffsetGuard(Offsets(p0=100))
    batch = recs(0, 120, 121)
    assert guard.holes(batch) == [Hole(0, 100, 120)]
    # retention deleted 100..109: reading the hole returns only what is left
    admitted = guard.admit(batch + recs(0, *range(110, 120)))
    assert offsets_of(admitted) == [(0, o) for o in range(110, 122)]
    assert guard.holes(recs(0, 122)) == []


def test_a_new_assignment_starts_again_from_the_durable_progress() -> None:
    offsets = Offsets(p0=100)
    guard = OffsetGuard(offsets)
    guard.admit(recs(0, 100, 101))  # admitted, but never made durable
    guard.reset()
    assert offsets_of(guard.admit(recs(0, 100))) == [(0, 100)]


def test_an_unknown_partition_starts_wherever_the_consumer_starts() -> None:
    guard = OffsetGuard(Offsets())
    batch = recs(2, 40, 41)
    assert guard.holes(batch) == []
    assert offsets_of(guard.admit(batch)) == [(2, 40), (2, 41)]
