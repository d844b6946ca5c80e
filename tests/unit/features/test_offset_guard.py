"""The offset guard: records strictly in order per partition, whatever the consumer delivers."""

from __future__ import annotations

from driftline_features.handlers import SourceRecord
from driftline_features.offset_guard import OffsetGuard


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
    admitted, seeks = guard.admit([*recs(0, 10, 11, 12), *recs(1, 0, 1)], now=0)
    assert offsets_of(admitted) == [(0, 10), (0, 11), (0, 12), (1, 0), (1, 1)] and seeks == {}
    guard.done(admitted)
    assert offsets.next == {0: 13, 1: 2}


def test_replays_of_durable_work_are_ignored() -> None:
    guard = OffsetGuard(Offsets(p0=12))
    admitted, seeks = guard.admit(recs(0, 10, 11, 12, 13), now=0)
    assert offsets_of(admitted) == [(0, 12), (0, 13)] and seeks == {}


def test_a_hole_seeks_back_and_nothing_after_it_passes_until_it_is_filled() -> None:
    offsets = Offsets(p0=144)
    guard = OffsetGuard(offsets)
    admitted, seeks = guard.admit([*recs(0, 149, 150), *recs(1, 5)], now=0)
    assert offsets_of(admitted) == [(1, 5)] and seeks == {0: 144}
    admitted, seeks = guard.admit(recs(0, 151, 152), now=1)  # fetched before the seek
    assert admitted == [] and seeks == {}
    admitted, seeks = guard.admit(recs(0, 144, 145, 146), now=2)
    assert offsets_of(admitted) == [(0, 144), (0, 145), (0, 146)] and seeks == {}
    guard.done(admitted)
    assert offsets.get(0) == 147


def test_a_hole_that_stays_is_accepted_after_a_few_seeks() -> None:
    guard = OffsetGuard(Offsets(p0=100), reseek_after_s=5, max_attempts=3)
    assert guard.admit(recs(0, 120), now=0) == ([], {0: 100})
    assert guard.admit(recs(0, 120), now=6) == ([], {0: 100})
    assert guard.admit(recs(0, 120), now=12) == ([], {0: 100})
    admitted, seeks = guard.admit(recs(0, 120, 121), now=18)
    assert offsets_of(admitted) == [(0, 120), (0, 121)] and seeks == {}


def test_a_new_assignment_forgets_pending_seeks() -> None:
    guard = OffsetGuard(Offsets(p0=100))
    guard.admit(recs(0, 120), now=0)
    guard.reset()
    admitted, _ = guard.admit(recs(0, 100), now=1)
    assert offsets_of(admitted) == [(0, 100)]


def test_an_unknown_partition_starts_wherever_the_consumer_starts() -> None:
    admitted, seeks = OffsetGuard(Offsets()).admit(recs(2, 40, 41), now=0)
    assert offsets_of(admitted) == [(2, 40), (2, 41)] and seeks == {}


def test_a_seek_is_repeated_on_time_even_when_no_record_arrives() -> None:
    guard = OffsetGuard(Offsets(p0=100), reseek_after_s=5, max_attempts=3)
    assert guard.admit(recs(0, 130), now=0) == ([], {0: 100})
    assert guard.due_reseeks(now=4) == {}  # records fetched before the seek may still come
    assert guard.due_reseeks(now=5) == {0: 100}
    assert guard.due_reseeks(now=7) == {}
    assert guard.due_reseeks(now=10) == {0: 100}
    assert guard.due_reseeks(now=20) == {}  # attempts used up: the next record decides
    admitted, _ = guard.admit(recs(0, 100, 101), now=21)
    assert offsets_of(admitted) == [(0, 100), (0, 101)]
    assert guard.due_reseeks(now=40) == {}
