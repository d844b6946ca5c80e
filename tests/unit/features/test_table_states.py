"""The window-state table's changelog writes: one per changed entity per batch, its last state,
encoded exactly as faust's own codec encodes the table's keys and values (recovery reads them)."""

from __future__ import annotations

import asyncio
from typing import Any

from faust.serializers import codecs

from driftline_features.stream import ChangelogWrites, TableStates


class FakeTable:
    """The part of a faust table TableStates uses; changelog sends are recorded."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.sent: list[tuple[int, bytes, bytes, str | None, str | None]] = []

    def get(self, key: str) -> Any:
        return self.data.get(key)

    def send_changelog(
        self, partition: int, key: Any, value: Any, key_serializer: str | None = None, **kw: str | None
    ) -> asyncio.Future[Any]:
        value_serializer = kw.get("value_serializer")
        self.sent.append((partition, key, value, key_serializer, value_serializer))
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


def state(n: int) -> dict[str, Any]:
    return {"format": 1, "sig": "s", "wm": 1000 * n, "from": None, "events": [[1000 * n, f"e{n}", [1.5], 0, [1.0]]]}


async def test_changes_are_coalesced_per_entity_and_flushed_once_per_batch() -> None:
    table, writes = FakeTable(), ChangelogWrites()
    states = TableStates(table, writes)
    states.put(1, "a", state(1))
    states.put(1, "a", state(2))
    states.put(3, "b", state(3))
    assert states.get("a") == state(2)  # the batch's next event of the entity sees the change at once
    assert table.sent == []  # nothing sent before the batch ends
    assert states.flush() == 2
    assert [(p, k) for p, k, *_ in table.sent] == [(1, codecs.dumps("json", "a")), (3, codecs.dumps("json", "b"))]
    assert len(writes.pending) == 2
    await writes.wait()
    assert states.flush() == 0  # a batch without changes sends nothing
    assert len(table.sent) == 2


async def test_records_are_encoded_as_faust_encodes_the_table() -> None:
    table = FakeTable()
    states = TableStates(table, ChangelogWrites())
    value = state(7)
    states.put(0, "proj\x1fcust-ü", value)
    states.flush()
    ((_, key, raw, key_serializer, value_serializer),) = table.sent
    assert (key_serializer, value_serializer) == ("raw", "raw")  # already bytes
    assert key == codecs.dumps("json", "proj\x1fcust-ü")
    assert raw == codecs.dumps("json", value)
    assert codecs.loads("json", raw) == value  # what recovery puts back in the table
