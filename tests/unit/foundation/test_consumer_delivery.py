"""The consumer runner commits a batch only when everything produced for it was delivered.

aiokafka's ``flush()`` waits for the in-flight batches but never raises for a failed delivery: the
runner must look at the delivery futures of the handler's sends and of the dead letters itself.
Kafka is faked here (a consumer that hands out one batch, a producer whose deliveries fail on
demand); the real broker's version is in tests/integration/test_consumer_guarantees.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaTimeoutError, MessageSizeTooLargeError

from driftline import consumer as consumer_module
from driftline import producer as producer_module
from driftline.catalog import EVENTS_DLQ, LABELS
from driftline.connect import KafkaConnection
from driftline.consumer import ConsumerRunner
from driftline.events import Event, envelope
from driftline.producer import EventProducer, collect_deliveries
from driftline.retry import PoisonRecord
from driftline.serde import DecodeError
from tests.fakes import JsonSerde

TP = TopicPartition(LABELS, 0)


class FakeKafkaProducer:
    """aiokafka's producer as the runner sees it: ``send`` enqueues, the future resolves later.

    ``fail(topic)`` says whether the next delivery to ``topic`` fails. ``flush`` only waits, like
    aiokafka's (it never raises for a failed delivery).
    """

    def __init__(self, fail: Callable[[str], BaseException | None]) -> None:
        self.fail = fail
        self.sent: list[tuple[str, bytes, bool]] = []  # topic, value, delivered
        self._pending: list[asyncio.Future[Any]] = []

    async def send(
        self, topic: str, value: bytes, key: bytes | None = None, headers: list[tuple[str, bytes]] | None = None
    ) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        error = self.fail(topic)
        self.sent.append((topic, value, error is None))
        loop = asyncio.get_running_loop()
        # Resolved by the "sender" a moment later, not at once.
        if error is None:
            loop.call_later(0.005, lambda: fut.done() or fut.set_result(("metadata", topic)))
        else:
            loop.call_later(0.005, lambda: fut.done() or fut.set_exception(error))
        self._pending.append(fut)
        return fut

    async def flush(self) -> None:
        if self._pending:
            await asyncio.wait(self._pending)
        self._pending.clear()

    async def stop(self) -> None:
        return None


class FakeConsumer:
    """Hands out the given records once, then nothing; records the commits."""

    def __init__(self, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        self.records = records
        self.commits: list[dict[TopicPartition, int]] = []
        self.committed = asyncio.Event()

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def getmany(self, timeout_ms: int = 0, max_records: int | None = None) -> dict[TopicPartition, Any]:
        if self.records:
            out, self.records = self.records, []
            return {TP: out}
        await asyncio.sleep(timeout_ms / 1000)
        return {}

    def assignment(self) -> set[TopicPartition]:  # the lag reporter's view: nothing assigned
        return set()

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))
        self.committed.set()


def consumer_record(offset: int, value: dict[str, Any]) -> ConsumerRecord[bytes, bytes]:
    data = JsonSerde().encode(LABELS, value)
    return ConsumerRecord(LABELS, 0, offset, 0, 0, b"k", data, None, 1, len(data), [])


def label(event_id: str) -> dict[str, Any]:
    return {
        **envelope("test", event_id=event_id),
        "labelled_event_id": "e",
        "entity_id": "c",
        "label": "approve",
        "source": "http",
    }


def _producer(
    monkeypatch: pytest.MonkeyPatch, fail: Callable[[str], BaseException | None]
) -> tuple[EventProducer, FakeKafkaProducer]:
    fake = FakeKafkaProducer(fail)
    monkeypatch.setattr(producer_module, "AIOKafkaProducer", lambda **_: fake)
    serde: Any = JsonSerde()
    return EventProducer(KafkaConnection("127.0.0.1:1"), serde, "test"), fake


async def _runner(
    monkeypatch: pytest.MonkeyPatch,
    records: list[ConsumerRecord[bytes, bytes]],
    fail: Callable[[str], BaseException | None],
    handler: Callable[[Event], Any],
) -> tuple[ConsumerRunner, FakeConsumer, FakeKafkaProducer]:
    producer, fake_producer = _producer(monkeypatch, fail)
    consumer = FakeConsumer(records)
    monkeypatch.setattr(consumer_module, "AIOKafkaConsumer", lambda *_, **__: consumer)
    serde: Any = JsonSerde()
    runner = ConsumerRunner(
        group_id="delivery-test",
        topics=[LABELS],
        kafka=KafkaConnection("127.0.0.1:1"),
        serde=serde,
        producer=producer,
        handler=handler,
        poll_timeout_ms=20,
    )
    return runner, consumer, fake_producer


def failing_first(times: int, topic: str, error: BaseException) -> Callable[[str], BaseException | None]:
    left = {"n": times}

    def fail(t: str) -> BaseException | None:
        if t == topic and left["n"] > 0:
            left["n"] -= 1
            return error
        return None

    return fail


async def _run_until_committed(runner: ConsumerRunner, consumer: FakeConsumer, timeout_s: float = 10) -> None:
    task = asyncio.create_task(runner.run())
    try:
        await asyncio.wait_for(consumer.committed.wait(), timeout_s)
        await asyncio.sleep(0.05)  # a second (wrong) commit would show here
    finally:
        runner.stop()
        await asyncio.wait_for(task, 5)


async def test_an_undelivered_handler_output_is_not_committed_and_the_batch_is_handled_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    handled: list[str] = []
    producer_ref: dict[str, EventProducer] = {}

    async def handle(event: Event) -> None:
        handled.append(event.event_id)
        # Like deployment's scorer: send and leave the acknowledgement to the runner.
        await producer_ref["p"].send_raw(EVENTS_DLQ, b"output of " + event.event_id.encode())

    records = [consumer_record(0, label("e-0")), consumer_record(1, label("e-1"))]
    runner, consumer, fake = await _runner(
        monkeypatch, records, failing_first(1, EVENTS_DLQ, KafkaTimeoutError("delivery timed out")), handle
    )
    producer_ref["p"] = runner.producer
    await _run_until_committed(runner, consumer)

    assert consumer.commits == [{TP: 2}]  # one commit, after the retry delivered everything
    assert handled == ["e-0", "e-1", "e-0", "e-1"]  # the whole batch again, nothing skipped
    assert [delivered for _, _, delivered in fake.sent] == [False, True, True, True]


async def test_an_undelivered_dead_letter_is_not_committed_and_is_written_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def handle(event: Event) -> None:
        raise PoisonRecord("refused", "validation_error")

    # A non-retriable delivery error is still an outage of the output: never skip, never commit.
    runner, consumer, fake = await _runner(
        monkeypatch,
        [consumer_record(7, label("bad"))],
        failing_first(2, EVENTS_DLQ, MessageSizeTooLargeError()),
        handle,
    )
    await _run_until_committed(runner, consumer)

    assert consumer.commits == [{TP: 8}]
    dlq = [(orjson.loads(v), ok) for t, v, ok in fake.sent if t == EVENTS_DLQ]
    assert [ok for _, ok in dlq] == [False, False, True]
    assert all(d["original"] for d, _ in dlq)


async def test_a_decode_failure_whose_dead_letter_is_undelivered_is_not_committed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class BadSerde(JsonSerde):
        async def decode(self, value: bytes | None, topic: str) -> tuple[dict[str, Any], int]:
            raise DecodeError("not avro")

    async def handle(event: Event) -> None:  # pragma: no cover - nothing decodes
        raise AssertionError("not reached")

    runner, consumer, fake = await _runner(
        monkeypatch, [consumer_record(3, label("x"))], failing_first(1, EVENTS_DLQ, KafkaTimeoutError()), handle
    )
    runner.serde = BadSerde()  # type: ignore[assignment]
    await _run_until_committed(runner, consumer)
    assert consumer.commits == [{TP: 4}]
    assert [ok for t, _, ok in fake.sent if t == EVENTS_DLQ] == [False, True]


async def test_stopping_while_deliveries_fail_commits_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    producer_ref: dict[str, EventProducer] = {}
    attempts = 0
    retried = asyncio.Event()

    async def handle(event: Event) -> None:
        nonlocal attempts
        attempts += 1
        if attempts >= 2:  # failing and retrying
            retried.set()
        await producer_ref["p"].send_raw(EVENTS_DLQ, b"out")

    runner, consumer, _ = await _runner(
        monkeypatch,
        [consumer_record(0, label("e"))],
        lambda t: KafkaTimeoutError() if t == EVENTS_DLQ else None,
        handle,
    )
    producer_ref["p"] = runner.producer
    task = asyncio.create_task(runner.run())
    await asyncio.wait_for(retried.wait(), 10)
    runner.stop()
    await asyncio.wait_for(task, 10)
    assert consumer.commits == []


async def test_publish_reports_its_own_failure_and_sends_outside_a_batch_are_not_collected(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    producer, _ = _producer(monkeypatch, lambda t: KafkaTimeoutError())
    with collect_deliveries() as produced:
        fut = await producer.send_raw(LABELS, b"a")
        try:
            await producer.publish(LABELS, label("p"))
        except KafkaTimeoutError:
            pass
        else:  # pragma: no cover
            raise AssertionError("publish must raise the failed delivery")
    assert produced == [fut]  # publish's own future is its caller's business
    late = await producer.send_raw(LABELS, b"after the block")
    assert late not in produced
    await asyncio.gather(fut, late, return_exceptions=True)
