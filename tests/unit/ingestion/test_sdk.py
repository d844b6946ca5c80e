"""The SDK's Publisher over HTTP: batching, indexes, retries with the same ids, errors."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import orjson
import pytest

from driftline_ingestion.config import IngestionSettings
from driftline_sdk import HttpTransport, Publisher, PublishError
from tests.fakes import FakeProducer
from tests.unit.ingestion.fakes import LOAN, in_process_app, loan_event


@asynccontextmanager
async def in_process_service(producer: FakeProducer) -> AsyncIterator[httpx.AsyncClient]:
    """The service's app (fake producer) behind an httpx client."""
    app = in_process_app(producer, IngestionSettings(), tokens=["sdk-token"], max_keys=10_000)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://ingestion") as client:
        yield client


async def test_publish_batches_and_reports_errors_by_index_of_the_input() -> None:
    producer = FakeProducer()
    async with in_process_service(producer) as client:
        pub = Publisher(HttpTransport(token="sdk-token", client=client), batch_size=100, concurrency=3)
        events: list[Any] = [
            {"type": "loan_application", "payload": {**LOAN, "customer_id": f"c{i}"}} for i in range(250)
        ]
        events[7] = {"type": "loan_application", "payload": {**LOAN, "age": "x"}}
        events[180] = {"type": "boat", "payload": {}}
        seen: list[int] = []
        result = await pub.publish(events, on_progress=seen.append)
    assert (result.accepted, result.rejected, result.dead_lettered) == (248, 2, 2)
    assert [(e["index"], e["field"]) for e in result.errors] == [(7, "payload.age"), (180, "type")]
    assert sorted(seen) == [50, 100, 100]
    assert result.event_ids[7] is None and result.event_ids[180] is None
    # batches go concurrently: find input 0's record by its payload, not by send order
    sent_ids = {
        r["payload"]["customer_id"]: r["event_id"] for _, r, _ in producer.sent if "customer_id" in r["payload"]
    }
    assert result.event_ids[0] == sent_ids["c0"] and result.event_ids[249] == sent_ids["c249"]
    assert len({*result.event_ids} - {None}) == 248
    assert "event_id" not in events[0]  # the caller's dicts are not modified


async def test_publish_labels_through_the_sdk() -> None:
    producer = FakeProducer()
    async with in_process_service(producer) as client:
        pub = Publisher(HttpTransport(token="sdk-token", client=client))
        published = await pub.publish([loan_event()])
        labels = [{"event_id": published.event_ids[0], "entity_id": "c-1", "label": "approve"}]
        result = await pub.publish_labels(labels)
    assert result.accepted == 1 and producer.sent[-1][0] == "labels"


async def test_a_503_is_retried_after_retry_after_with_the_same_event_ids() -> None:
    bodies: list[dict[str, Any]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        body = orjson.loads(request.content)
        bodies.append(body)
        if len(bodies) == 1:
            return httpx.Response(503, headers={"Retry-After": "0"}, json={"error": "overloaded", "accepted": 0})
        results = [{"index": i, "status": "accepted", "event_id": e["event_id"]} for i, e in enumerate(body["events"])]
        return httpx.Response(200, json={"accepted": len(results), "results": results, "errors": []})

    client = httpx.AsyncClient(transport=httpx.MockTransport(answer), base_url="http://x")
    pub = Publisher(HttpTransport(client=client))
    result = await pub.publish([{"type": "loan_application", "payload": LOAN} for _ in range(3)])
    assert len(bodies) == 2 and bodies[0] == bodies[1]
    assert result.accepted == 3 and result.event_ids == [e["event_id"] for e in bodies[0]["events"]]


async def test_a_refused_token_and_an_exhausted_retry_raise() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(403, json={"detail": {"error": "forbidden"}})

    pub = Publisher(HttpTransport(client=httpx.AsyncClient(transport=httpx.MockTransport(refuse), base_url="http://x")))
    with pytest.raises(PublishError, match="refused the token") as err:
        await pub.publish([loan_event()])
    assert err.value.status == 403

    calls = []

    def busy(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(503, headers={"Retry-After": "0"}, json={"accepted": 0, "message": "busy"})

    transport = HttpTransport(
        client=httpx.AsyncClient(transport=httpx.MockTransport(busy), base_url="http://x"), max_retries=2
    )
    with pytest.raises(PublishError, match="retries exhausted"):
        await Publisher(transport).publish([loan_event()])
    assert len(calls) == 3


async def test_a_failed_batch_carries_what_the_other_batches_stored() -> None:
    """Retries exhausted for one batch: the error says what was stored before (and beside) it."""

    def answer(request: httpx.Request) -> httpx.Response:
        events = orjson.loads(request.content)["events"]
        if events[0]["payload"]["customer_id"] == "fail":  # this batch: stored in part, then no ack
            results = [{"index": 0, "status": "accepted", "event_id": events[0]["event_id"]}]
            results += [
                {"index": i, "status": "failed", "event_id": e["event_id"]} for i, e in enumerate(events[1:], 1)
            ]
            body = {"accepted": 1, "failed": len(events) - 1, "results": results, "errors": [], "message": "no ack"}
            return httpx.Response(503, headers={"Retry-After": "0"}, json=body)
        results = [{"index": i, "status": "accepted", "event_id": e["event_id"]} for i, e in enumerate(events)]
        results[1] = {"index": 1, "status": "rejected", "event_id": None}
        errors = [{"index": 1, "field": "payload.age", "error_type": "wrong_type", "reason": "no"}]
        body = {"accepted": len(events) - 1, "rejected": 1, "dead_lettered": 1, "results": results, "errors": errors}
        return httpx.Response(207, json=body)

    client = httpx.AsyncClient(transport=httpx.MockTransport(answer), base_url="http://x")
    pub = Publisher(HttpTransport(client=client, max_retries=1), batch_size=10, concurrency=2)
    events = [loan_event(customer_id="fail" if 10 <= i < 20 else f"c{i}") for i in range(30)]
    with pytest.raises(PublishError, match="retries exhausted") as err:
        await pub.publish(events)
    partial = err.value.partial
    assert partial is not None
    assert (partial.accepted, partial.rejected, partial.dead_lettered) == (9 + 1 + 9, 2, 2)
    assert [e["index"] for e in partial.errors] == [1, 21]  # indexes of the input, as in a result
    assert len(partial.event_ids) == 30
    assert partial.event_ids[10] == events[10]["event_id"] and partial.event_ids[11] is None
