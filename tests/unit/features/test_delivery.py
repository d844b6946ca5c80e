"""faust delivery in one ``wait_first`` per fetched batch (driftline_features.delivery): the same
deliveries as faust's own per-record loop, and the private parts of faust's consumer it relies on."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import pytest
from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from driftline_features.delivery import BatchDeliveryConsumer, Transport, use_batch_delivery

T0, T1 = TP("events.raw", 0), TP("events.raw", 1)


class Msg:
    def __init__(self, tp: TP, offset: int, generation_id: int = 1) -> None:
        self.tp, self.topic, self.offset, self.generation_id = tp, tp.topic, offset, generation_id


class Fake:
    """The attributes of faust's consumer that ``_deliver`` uses."""

    def __init__(self, read_offset: dict[TP, int | None] | None = None, block_at: int | None = None) -> None:
        self._read_offset: dict[TP, int | None] = read_offset or {}
        self._commit_every = None
        self._n_acked = 0
        self.delivered: list[tuple[TP, int]] = []
        self.gaps: list[tuple[TP, int, int]] = []
        self.block_at = block_at
        self.flow_active = True
        topics = type("Topics", (), {"acks_enabled_for": staticmethod(lambda t: not t.endswith("-changelog"))})
        self.app = type("App", (), {"topics": topics, "consumer_generation_id": 1, "rebalancing": False})()

    async def callback(self, message: Msg) -> None:
        if message.offset == self.block_at:
            await asyncio.Event().wait()  # a delivery that blocks (a full channel queue)
        self.delivered.append((message.tp, message.offset))

    async def _add_gap(self, tp: TP, start: int, end: int) -> None:
        self.gaps.append((tp, start, end))


def deliver(fake: Fake, items: list[tuple[TP, int]]) -> Any:
    records = [(tp, Msg(tp, offset)) for tp, offset in items]
    return BatchDeliveryConsumer._deliver(fake, records)  # type: ignore[arg-type]


async def test_every_record_is_delivered_in_order_and_its_read_offset_kept() -> None:
    fake = Fake()
    await deliver(fake, [(T0, 0), (T1, 0), (T0, 1), (T1, 1)])
    assert fake.delivered == [(T0, 0), (T1, 0), (T0, 1), (T1, 1)]
    assert fake._read_offset == {T0: 1, T1: 1}


async def test_records_below_the_read_offset_are_dropped_and_gaps_registered_as_faust_does() -> None:
    fake = Fake(read_offset={T0: 5})
    await deliver(fake, [(T0, 4), (T0, 5), (T0, 9)])
    assert fake.delivered == [(T0, 5), (T0, 9)]  # 4 was delivered before
    assert fake.gaps == [(T0, 6, 9)]
    assert fake._read_offset[T0] == 9


async def test_a_cancelled_delivery_keeps_the_read_offset_of_the_last_record_delivered() -> None:
    """A rebalance cancels the batch's delivery (``wait_first`` on ``suspend_flow``): the records
    not delivered are not marked read, so they are delivered when fetched again."""
    fake = Fake(block_at=2)
    task = asyncio.ensure_future(deliver(fake, [(T0, 0), (T0, 1), (T0, 2), (T0, 3)]))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert fake.delivered == [(T0, 0), (T0, 1)]
    assert fake._read_offset == {T0: 1}


async def test_delivery_stops_when_the_flow_stops_or_the_generation_changes() -> None:
    """As faust's getmany, which checks both before each record it yields."""

    class Stopping(Fake):
        async def callback(self, message: Msg) -> None:
            await super().callback(message)
            if message.offset == 1:
                self.flow_active = False

    fake = Stopping()
    await deliver(fake, [(T0, 0), (T0, 1), (T0, 2)])
    assert fake.delivered == [(T0, 0), (T0, 1)]

    class Rebalanced(Fake):
        async def callback(self, message: Msg) -> None:
            await super().callback(message)
            self.app.consumer_generation_id = 2

    fake = Rebalanced()
    await deliver(fake, [(T0, 0), (T0, 1)])
    assert fake.delivered == [(T0, 0)]


async def test_stream_records_fetched_while_a_rebalance_completes_wait_for_it_changelog_records_do_not() -> None:
    """faust's recovery clears the channel queues when it resumes the flow, after the seek: a
    stream record delivered before that would be lost; a changelog record is what recovery reads."""
    changelog = TP("p.features-entity-windows-changelog", 0)
    fake = Fake()
    fake.app.rebalancing = True
    task = asyncio.ensure_future(deliver(fake, [(changelog, 0), (T0, 5), (T0, 6)]))
    await asyncio.sleep(0.05)
    assert fake.delivered == [(changelog, 0)]
    fake.app.rebalancing = False  # the queues were cleared: now the records are kept
    await asyncio.wait_for(task, 1)
    assert fake.delivered == [(changelog, 0), (T0, 5), (T0, 6)]

    fake = Fake()
    fake.app.rebalancing = True
    task = asyncio.ensure_future(deliver(fake, [(T0, 5)]))
    await asyncio.sleep(0.02)
    fake.app.consumer_generation_id = 2  # another rebalance: the record is stale, not delivered
    await asyncio.wait_for(task, 1)
    assert fake.delivered == []


def test_the_private_parts_of_fausts_consumer_it_relies_on() -> None:
    """Pinned: a faust upgrade that changes them must fail here, not in production."""
    base = faust_consumer.Consumer
    assert inspect.iscoroutinefunction(base._drain_messages)
    assert list(inspect.signature(base._drain_messages).parameters) == ["self", "fetcher"]
    assert list(inspect.signature(base._add_gap).parameters) == ["self", "tp", "offset_from", "offset_to"]
    source = inspect.getsource(base._drain_messages)
    # The per-record body _deliver reproduces (read offsets, gaps, commit_every, callback).
    for part in (
        "self._read_offset",
        "self._add_gap(tp, r_offset + 1, offset)",
        "self._n_acked >= commit_every",
        "self.wait_first(\n                                callback(message), self.suspend_flow.wait()",
        "set_read_offset(tp, offset)",
    ):
        assert part in source, part
    for attr in ("_commit_every", "_n_acked", "_read_offset", "suspend_flow"):
        assert attr in inspect.getsource(base.__init__) or attr in inspect.getsource(base), attr
    assert issubclass(BatchDeliveryConsumer, faust_aiokafka.Consumer)
    assert Transport.Consumer is BatchDeliveryConsumer


def test_the_app_consumes_with_it() -> None:
    import faust

    app = faust.App("t-delivery", broker="kafka://localhost:1", autodiscover=False, web_enabled=False, env={})
    use_batch_delivery(app)
    assert isinstance(app.transport, Transport)
