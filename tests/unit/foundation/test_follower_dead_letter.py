"""A follower waits for the DLQ's acknowledgement of an undecodable live record, retrying outages."""

from __future__ import annotations

from typing import Any

from aiokafka.errors import KafkaTimeoutError
from aiokafka.structs import ConsumerRecord

from driftline.follow import TopicFollower
from tests.fakes import FakeProducer, JsonSerde


def record() -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic="t.models.promoted", partition=0, offset=42, timestamp=0, timestamp_type=0, key=b"m",
        value=b"\x07garbage", checksum=None, serialized_key_size=1, serialized_value_size=8, headers=(),
    )  # fmt: skip


async def test_an_unacknowledged_dead_letter_is_sent_again() -> None:
    # The first dead letter is enqueued but never acknowledged (delivery timeout).
    producer = FakeProducer(failures=1, error=lambda: KafkaTimeoutError("delivery timed out"))

    async def nothing(*_: Any) -> None:
        return None

    follower = TopicFollower(
        name="unit",
        topics=["models.promoted"],
        bootstrap_servers="127.0.0.1:1",
        serde=JsonSerde(topic_prefix="t."),  # type: ignore[arg-type]
        producer=producer,  # type: ignore[arg-type]
        on_replayed=nothing,
        on_event=nothing,
    )
    assert await follower._decode(record(), live=True) is None
    assert len(producer.dead) == 2, "the dead letter whose delivery failed was not sent again"
    assert producer.dead[-1]["original"] == b"\x07garbage"
    assert producer.dead[-1]["error_type"] == "decode_error"


async def test_a_replayed_undecodable_record_is_skipped_without_a_dead_letter() -> None:
    producer = FakeProducer()

    async def nothing(*_: Any) -> None:
        return None

    follower = TopicFollower(
        name="unit", topics=["models.promoted"], bootstrap_servers="127.0.0.1:1",
        serde=JsonSerde(topic_prefix="t."), producer=producer, on_replayed=nothing, on_event=nothing,  # type: ignore[arg-type]
    )  # fmt: skip
    assert await follower._decode(record(), live=False) is None
    assert producer.dead == []
