"""PredictionPublisher: HTTP predictions are enqueued without waiting, and a failed delivery is sent again."""

from __future__ import annotations

import asyncio
from typing import Any

from driftline.events import envelope
from driftline.records import PredictionMade
from driftline.retry import Backoff
from driftline_deployment.publish import PredictionPublisher


def record(i: int) -> PredictionMade:
    return PredictionMade(
        **envelope("test"),
        source_event_id=f"e{i}",
        entity_id="c",
        model_name="m",
        model_version=1,
        score=0.5,
        predicted_class="approve",
        scoring_latency_ms=0.1,
        served="http",
    )


class Sender:
    """Futures the test resolves (the broker's acknowledgements)."""

    def __init__(self) -> None:
        self.sent: list[tuple[PredictionMade, asyncio.Future[Any]]] = []

    async def send(self, topic: str, rec: PredictionMade, *, key: bytes | None = None) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.sent.append((rec, fut))
        return fut


async def test_submit_returns_before_the_broker_acknowledges_and_a_failed_delivery_is_resent(monkeypatch: Any) -> None:
    monkeypatch.setattr(Backoff, "next_delay", lambda self: 0.0)
    sender = Sender()
    publisher = PredictionPublisher(sender)
    await publisher.submit([record(1), record(2)])  # returns with nothing acknowledged
    assert publisher.pending == 2 and len(sender.sent) == 2
    sender.sent[0][1].set_result(None)
    sender.sent[1][1].set_exception(RuntimeError("broker gone"))
    await asyncio.sleep(0.01)
    assert [r.source_event_id for r, _ in sender.sent] == ["e1", "e2", "e2"]  # e2 sent again
    assert publisher.pending == 1
    drain = asyncio.create_task(publisher.drain())
    await asyncio.sleep(0.01)
    assert not drain.done()  # waits for the resent record
    sender.sent[2][1].set_result(None)
    await asyncio.wait_for(drain, 1)
    assert publisher.pending == 0


async def test_beyond_max_pending_records_are_counted_not_queued() -> None:
    sender = Sender()
    publisher = PredictionPublisher(sender, max_pending=2, drain_timeout_s=0.05)
    await publisher.submit([record(1), record(2), record(3)])
    assert [r.source_event_id for r, _ in sender.sent] == ["e1", "e2"]
    await publisher.drain()  # gives up after its timeout: the two are counted as unpublished
    assert publisher.pending == 2
