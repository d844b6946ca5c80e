"""A follower waits for the DLQ's acknowledgement of an undecodable live record, retrying outages."""

from __future__ import annotations

from typing import Any

from aiokafka.errors import KafkaTimeoutError
from aiokafka.structs import ConsumerRecord

from driftline.connect import KafkaConnection
from driftline.follow import TopicFollower
from tests.fakes import FakeProducer, JsonSerde


def record() -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic="t.models.promoted", partition=0, offset=42, timestamp=0, timestamp_type=0, key=b"m",
        value=b"\x07garbage", checksum=None, serialized_key_size=1, serialized_value_size=8, headers=(),
    )  # fmt: skip


def follower_with(producer: FakeProducer, on_event: Any) -> TopicFollower:
    async def nothing(*_: Any) -> None:
        return None

    follower = TopicFollower(
        name="unit", topics=["models.promoted"], kafka=KafkaConnection("127.0.0.1:1"),
        serde=JsonSerde(topic_prefix="t."), producer=producer, on_replayed=nothing, on_event=on_event,  # type: ignore[arg-type]
    )  # fmt: skip
    return follower


async def test_an_unacknowledged_dead_letter_is_sent_again() -> None:
    # The first dead letter is enqueued but never acknowledged (delivery timeout).
    producer = FakeProducer(failures=1, error=lambda: KafkaTimeoutError("delivery timed out"))
    follower = follower_with(producer, on_event=None)
    assert await follower._decode(record(), live=True) is None
    assert len(producer.dead) == 2, "the dead letter whose delivery failed was not sent again"
    assert producer.dead[-1]["original"] == b"\x07garbage"
    assert producer.dead[-1]["error_type"] == "decode_error"


async def test_a_replayed_undecodable_record_is_skipped_without_a_dead_letter() -> None:
    producer = FakeProducer()
    follower = follower_with(producer, on_event=None)
    assert await follower._decode(record(), live=False) is None
    assert producer.dead == []


def an_event() -> Any:
    from driftline.events import Event

    value = {"event_id": "e1", "correlation_id": "c1"}
    return Event("models.promoted", 0, 42, b"m", value, b"\x07bytes", 1, 0, record="a typed record")


async def test_a_live_record_the_handler_keeps_failing_on_goes_to_the_dlq_and_following_goes_on() -> None:
    producer = FakeProducer()
    calls: list[int] = []

    async def broken(_: Any) -> None:
        calls.append(1)
        raise ValueError("cannot apply this promotion")

    await follower_with(producer, broken)._handle_live(record(), an_event())
    assert len(calls) == 3, "a failing record is tried max_attempts times, not forever"
    assert [d["error_type"] for d in producer.dead] == ["handler_error"]
    assert producer.dead[0]["original"] == b"\x07garbage" and producer.dead[0]["attempts"] == 3


async def test_an_outage_is_retried_without_counting_against_the_record() -> None:
    producer = FakeProducer()
    calls: list[int] = []

    async def flaky(_: Any) -> None:
        calls.append(1)
        if len(calls) <= 4:
            raise ConnectionError("database down")

    await follower_with(producer, flaky)._handle_live(record(), an_event())
    assert len(calls) == 5 and producer.dead == [], "an outage skipped the record or dead-lettered it"


async def test_a_refused_record_is_dead_lettered_at_once_with_its_reason() -> None:
    from driftline.retry import PoisonRecord

    producer = FakeProducer()
    calls: list[int] = []

    async def refuse(_: Any) -> None:
        calls.append(1)
        raise PoisonRecord("model file missing", "artifact_missing")

    await follower_with(producer, refuse)._handle_live(record(), an_event())
    assert len(calls) == 1
    assert [(d["error_type"], d["reason"]) for d in producer.dead] == [("artifact_missing", "model file missing")]
