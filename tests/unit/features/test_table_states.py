"""The window-state table's changelog writes: one per changed entity per batch, its last state,
encoded exactly as faust's own codec encodes the table's keys and values (recovery reads them),
sent as whole producer batches per changelog partition through faust's own producer."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from faust.serializers import codecs
from faust.transport.drivers import aiokafka as faust_aiokafka

from driftline_features.stream import ChangelogBatches, ChangelogWrites, TableStates


class FakeTopic:
    def get_topic_name(self) -> str:
        return "p.features-entity-windows-changelog"


class FakeTable:
    """The part of a faust table TableStates uses."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.changelog_topic = FakeTopic()

    def get(self, key: str) -> Any:
        return self.data.get(key)


class FakeSender:
    """Records the batches sent; one resolved future per partition."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, int, bytes, bytes]] = []

    async def send(self, topic: str, records: Mapping[int, Sequence[tuple[bytes, bytes]]]) -> list[Any]:
        futures = []
        for partition, items in records.items():
            self.sent += [(topic, partition, k, v) for k, v in items]
            fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            fut.set_result(None)
            futures.append(fut)
        return futures


def state(n: int) -> dict[str, Any]:
    return {"format": 1, "sig": "s", "wm": 1000 * n, "from": None, "events": [[1000 * n, f"e{n}", [1.5], 0, [1.0]]]}


async def test_changes_are_coalesced_per_entity_and_flushed_once_per_batch() -> None:
    table, writes, sender = FakeTable(), ChangelogWrites(), FakeSender()
    states = TableStates(table, writes, sender)  # type: ignore[arg-type]
    states.put(1, "a", state(1))
    states.put(1, "a", state(2))
    states.put(3, "b", state(3))
    states.put(1, "c", state(4))
    assert states.get("a") == state(2)  # the batch's next event of the entity sees the change at once
    assert sender.sent == []  # nothing sent before the batch ends
    assert await states.flush() == 3
    assert [(p, k) for _, p, k, _ in sender.sent] == [
        (1, codecs.dumps("json", "a")),
        (1, codecs.dumps("json", "c")),
        (3, codecs.dumps("json", "b")),
    ]
    assert {t for t, *_ in sender.sent} == {"p.features-entity-windows-changelog"}
    assert len(writes.pending) == 2  # one future per partition's batch
    await writes.wait()
    assert await states.flush() == 0  # a batch without changes sends nothing
    assert len(sender.sent) == 3


async def test_records_are_encoded_as_faust_encodes_the_table() -> None:
    sender = FakeSender()
    states = TableStates(FakeTable(), ChangelogWrites(), sender)  # type: ignore[arg-type]
    value = state(7)
    states.put(0, "proj\x1fcust-ü", value)
    await states.flush()
    ((_, _, key, raw),) = sender.sent
    assert key == codecs.dumps("json", "proj\x1fcust-ü")
    assert raw == codecs.dumps("json", value)
    assert codecs.loads("json", raw) == value  # what recovery puts back in the table


async def test_a_state_encoded_by_the_processor_is_sent_as_given() -> None:
    sender = FakeSender()
    states = TableStates(FakeTable(), ChangelogWrites(), sender)  # type: ignore[arg-type]
    states.put(0, "a", state(1))
    states.put(0, "b", state(2))
    given = orjson.dumps(state(1))
    await states.flush({"a": given})
    sent = {codecs.loads("json", k): v for _, _, k, v in sender.sent}
    assert sent["a"] is given  # not encoded again
    assert sent["b"] == codecs.dumps("json", state(2))


class FakeApp:
    def __init__(self, producer: Any) -> None:
        self.producer = type("FaustProducer", (), {"_ensure_producer": staticmethod(lambda: producer)})


class RecordingProducer:
    """aiokafka's batch API (create_batch / append / send_batch) with tiny batches."""

    def __init__(self, records_per_batch: int) -> None:
        self.records_per_batch = records_per_batch
        self.batches: list[tuple[str, int, list[bytes]]] = []

    def create_batch(self) -> Any:
        n = self.records_per_batch

        class Builder:
            def __init__(self) -> None:
                self.keys: list[bytes] = []

            def append(self, *, timestamp: Any, key: bytes, value: bytes) -> Any:
                if len(self.keys) >= n or len(value) > 100:
                    return None
                self.keys.append(key)
                return object()

        return Builder()

    async def send_batch(self, builder: Any, topic: str, *, partition: int) -> Any:
        self.batches.append((topic, partition, builder.keys))
        return f"future-{len(self.batches)}"


async def test_changelog_batches_are_whole_producer_batches_per_partition() -> None:
    producer = RecordingProducer(records_per_batch=2)
    sender = ChangelogBatches(FakeApp(producer))  # type: ignore[arg-type]
    futures = await sender.send("t", {0: [(b"a", b"1"), (b"b", b"2"), (b"c", b"3")], 2: [(b"d", b"4")]})
    assert producer.batches == [("t", 0, [b"a", b"b"]), ("t", 0, [b"c"]), ("t", 2, [b"d"])]
    assert futures == ["future-1", "future-2", "future-3"]
    with pytest.raises(ValueError, match="does not fit"):
        await sender.send("t", {0: [(b"big", b"x" * 200)]})


def test_the_private_parts_of_faust_and_aiokafka_it_relies_on() -> None:
    """Pinned: faust's producer keeps its aiokafka producer behind ``_ensure_producer``, which has
    the batch API."""
    ensure = inspect.signature(faust_aiokafka.Producer._ensure_producer)
    assert list(ensure.parameters) == ["self"]
    assert ensure.return_annotation in (AIOKafkaProducer, "aiokafka.AIOKafkaProducer")
    assert list(inspect.signature(AIOKafkaProducer.send_batch).parameters) == ["self", "batch", "topic", "partition"]
    assert inspect.iscoroutinefunction(AIOKafkaProducer.send_batch)
    assert callable(AIOKafkaProducer.create_batch)
