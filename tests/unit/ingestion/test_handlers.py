"""Ingestion's handler with a fake producer: answers, DLQ, idempotency, backpressure, ack failures."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import orjson
import pytest

from driftline.project import load_project
from driftline.validation import Validator
from driftline_ingestion.handlers import IngestHandler, body_too_large
from driftline_ingestion.store import IdempotencyKeys
from tests.fakes import FakeProducer
from tests.unit.ingestion.fakes import loan_event

VALIDATOR = Validator.from_project(load_project())


def make(producer: FakeProducer, **options: Any) -> IngestHandler:
    keys = IdempotencyKeys(options.pop("horizon_s", 60.0), options.pop("max_keys", 1000))
    return IngestHandler(producer, VALIDATOR, keys, **options)


def body(items: list[Any]) -> bytes:
    return orjson.dumps({"events": items})


async def test_a_valid_batch_is_produced_and_answered_200() -> None:
    producer = FakeProducer()
    events = [loan_event(customer_id=f"c{i}") for i in range(3)]
    reply = await make(producer).ingest("events", body(events))
    assert reply.status == 200
    assert (reply.body["accepted"], reply.body["rejected"], reply.body["duplicates"]) == (3, 0, 0)
    assert [r["status"] for r in reply.body["results"]] == ["accepted"] * 3
    assert [(t, rec["event_id"], k) for t, rec, k in producer.sent] == [
        ("events.raw", e["event_id"], f"c{i}".encode()) for i, e in enumerate(events)
    ]
    assert producer.dead == []


async def test_a_mixed_batch_stores_the_valid_and_reports_the_invalid_by_index() -> None:
    producer = FakeProducer()
    bad = loan_event(age="old")
    reply = await make(producer).ingest("events", body([loan_event(), bad, loan_event()]))
    assert reply.status == 207
    assert (reply.body["accepted"], reply.body["rejected"], reply.body["dead_lettered"]) == (2, 1, 1)
    assert reply.body["errors"] == [
        {"index": 1, "field": "payload.age", "error_type": "wrong_type", "reason": 'expected long, got string "old"'}
    ]
    (dead,) = producer.dead
    assert dead["source"] == "http:/v1/events" and dead["error_type"] == "wrong_type"
    assert json.loads(dead["original"]) == bad
    assert "payload.age" in dead["reason"]


async def test_an_all_invalid_request_is_422_and_everything_goes_to_the_dlq() -> None:
    producer = FakeProducer()
    reply = await make(producer).ingest("events", body([{"type": "nope"}, loan_event(loan=None)]))
    assert reply.status == 422
    assert reply.body["error"] == "unknown_event_type"
    assert [e["index"] for e in reply.body["errors"]] == [0, 1]
    assert len(producer.dead) == 2 and producer.sent == []


@pytest.mark.parametrize(
    ("raw", "status", "error_type"),
    [
        (b'{"events": [', 400, "malformed_json"),
        (b"12", 400, "invalid_body"),
        (b'{"events": []}', 400, "empty_batch"),
        (orjson.dumps([loan_event() for _ in range(4)]), 413, "batch_too_large"),
    ],
)
async def test_a_request_refused_as_a_whole_keeps_its_body_in_the_dlq(raw: bytes, status: int, error_type: str) -> None:
    producer = FakeProducer()
    reply = await make(producer, max_batch=3).ingest("events", raw)
    assert reply.status == status
    assert reply.body["error"] == error_type and reply.body["dead_lettered"] == 1
    assert producer.dead == [
        {
            "source": "http:/v1/events",
            "reason": reply.body["message"],
            "error_type": error_type,
            "original": raw,
            "correlation_id": None,
        }
    ]
    assert producer.sent == []


async def test_an_oversize_body_is_refused_with_its_prefix_kept() -> None:
    producer = FakeProducer()
    reply = await make(producer).refuse("events", body_too_large(b"[{", 1024, 5000), 413)
    assert reply.status == 413 and reply.body["error"] == "body_too_large"
    assert "5000 bytes" in reply.body["message"] and producer.dead[0]["original"] == b"[{"


async def test_labels_go_to_the_labels_topic() -> None:
    producer = FakeProducer()
    event = loan_event()
    label = {"event_id": event["event_id"], "entity_id": "c-1", "label": "approve"}
    reply = await make(producer).ingest("labels", orjson.dumps({"labels": [label, {**label, "label": "?"}]}))
    assert reply.status == 207
    assert [t for t, _, _ in producer.sent] == ["labels"]
    assert producer.dead[0]["source"] == "http:/v1/labels"


# --- idempotency -------------------------------------------------------------------------------------


async def test_a_retried_batch_is_answered_duplicate_and_not_produced_again() -> None:
    producer = FakeProducer()
    handler = make(producer)
    events = [loan_event() for _ in range(5)]
    first = await handler.ingest("events", body(events))
    again = await handler.ingest("events", body(events))
    assert first.status == again.status == 200
    assert (again.body["accepted"], again.body["duplicates"]) == (0, 5)
    assert [r["event_id"] for r in again.body["results"]] == [e["event_id"] for e in events]
    assert len(producer.sent) == 5


async def test_the_same_id_twice_in_one_batch_is_produced_once() -> None:
    producer = FakeProducer()
    event = loan_event()
    reply = await make(producer).ingest("events", body([event, event]))
    assert (reply.body["accepted"], reply.body["duplicates"]) == (1, 1)
    assert len(producer.sent) == 1


async def test_an_id_reused_for_other_content_is_refused_as_a_conflict() -> None:
    producer = FakeProducer()
    handler = make(producer)
    event = loan_event()
    await handler.ingest("events", body([event]))
    reply = await handler.ingest("events", body([{**event, "payload": {**event["payload"], "loan": 1.0}}]))
    assert reply.status == 422
    assert reply.body["errors"][0]["error_type"] == "event_id_conflict"
    assert len(producer.sent) == 1 and producer.dead[0]["error_type"] == "event_id_conflict"


async def test_ids_are_forgotten_after_the_horizon() -> None:
    now = [0.0]
    producer = FakeProducer()
    handler = IngestHandler(producer, VALIDATOR, IdempotencyKeys(10.0, 1000, clock=lambda: now[0]))
    events = [loan_event()]
    await handler.ingest("events", body(events))
    now[0] = 11.0
    reply = await handler.ingest("events", body(events))
    assert reply.body["accepted"] == 1 and len(producer.sent) == 2


def test_the_oldest_ids_go_first_when_the_store_is_full() -> None:
    keys = IdempotencyKeys(60.0, 2)
    loop = asyncio.new_event_loop()
    try:
        for i in range(3):
            keys.reserve("events.raw", str(i), b"", loop.create_future())
    finally:
        loop.close()
    assert len(keys) == 2
    assert keys.get("events.raw", "0") is None and keys.get("events.raw", "2") is not None


# --- backpressure and acknowledgements -------------------------------------------------------------


async def test_when_too_much_is_in_flight_requests_get_503_with_retry_after_and_nothing_is_sent() -> None:
    producer = FakeProducer(hold=True)
    handler = make(producer, max_in_flight=5, retry_after_s=2, max_batch=5)
    batch = body([loan_event() for _ in range(5)])
    holding = asyncio.create_task(handler.ingest("events", batch))
    await producer.wait_pending(5)
    refused = await handler.ingest("events", body([loan_event()]))
    assert refused.status == 503
    assert refused.headers == {"Retry-After": "2"} and refused.body["error"] == "overloaded"
    assert len(producer.sent) == 5 and producer.dead == []
    also_refused = await handler.ingest("events", b"not json")  # even a refusal needs a slot for its DLQ record
    assert also_refused.status == 503 and producer.dead == []
    producer.release()
    first = await holding
    assert first.status == 200
    assert handler.in_flight.count == 0
    producer.hold = False
    assert (await handler.ingest("events", body([loan_event(), loan_event()]))).status == 200


async def test_a_retry_while_the_first_send_is_in_flight_waits_for_it_instead_of_producing_again() -> None:
    producer = FakeProducer(hold=True)
    handler = make(producer)
    events = [loan_event() for _ in range(3)]
    first = asyncio.create_task(handler.ingest("events", body(events)))
    await producer.wait_pending(3)
    retry = asyncio.create_task(handler.ingest("events", body(events)))
    await asyncio.sleep(0.01)
    assert not retry.done()
    producer.release()
    assert (await first).body["accepted"] == 3
    assert (await retry).body["duplicates"] == 3
    assert len(producer.sent) == 3


async def test_no_ack_in_time_is_503_and_the_retry_after_the_ack_is_a_duplicate() -> None:
    producer = FakeProducer(hold=True)
    handler = make(producer, ack_timeout_s=0.05)
    events = [loan_event(), loan_event()]
    late = await handler.ingest("events", body(events))
    assert late.status == 503 and late.headers["Retry-After"] == "1"
    assert late.body["failed"] == 2 and late.body["error"] == "not_acknowledged"
    assert handler.in_flight.count == 2  # still held by the sends that are waiting for the broker
    producer.release()
    await asyncio.sleep(0)
    assert handler.in_flight.count == 0
    retry = await handler.ingest("events", body(events))
    assert retry.status == 200 and retry.body["duplicates"] == 2
    assert len(producer.sent) == 2


async def test_a_failed_send_is_503_and_the_retry_sends_again() -> None:
    producer = FakeProducer(fail=True)
    handler = make(producer)
    events = [loan_event()]
    failed = await handler.ingest("events", body(events))
    assert failed.status == 503 and failed.body["accepted"] == 0
    producer.fail = False
    retry = await handler.ingest("events", body(events))
    assert retry.status == 200 and retry.body["accepted"] == 1
    assert len(producer.sent) == 2 and handler.in_flight.count == 0


async def test_a_producer_that_refuses_to_enqueue_frees_the_slots_and_ids() -> None:
    producer = FakeProducer()

    async def broken_send(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("producer stopped")

    producer.send = broken_send  # type: ignore[method-assign]
    handler = make(producer)
    events = [loan_event()]
    reply = await handler.ingest("events", body(events))
    assert reply.status == 503 and reply.body["failed"] == 1
    assert handler.in_flight.count == 0 and len(handler.keys) == 0


# --- the DLQ keeps the refused item's own bytes ------------------------------------------------------

# A refused item written the way no JSON encoder would write it again: exponent, escapes, spacing.
ODD_ITEM = (
    b'{ "type" : "loan_application",\n  "payload": {"customer_id": "caf\\u00e9", "salary": 1.0e2,'
    b' "commission": 0E0, "age": "forty", "elevel": 2, "car": 7, "zipcode": 3, "hvalue": 1.50000e5,'
    b' "hyears": 12, "loan": 2.0E+4, "note": "tab\\there \\/ \\"q\\""} }'
)


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        (b'{"events": [' + orjson.dumps(loan_event()) + b" ,\n\t" + ODD_ITEM + b" ]}", "events"),
        (b"[ " + ODD_ITEM + b"," + orjson.dumps(loan_event()) + b"]", "events"),
        (b"  " + ODD_ITEM + b"\n", "events"),
        (b'{ "labels" :[{"event_id": "\\u0030", "entity_id": "c\\u00e9", "label": "approve", "x": 1.0e2}]}', "labels"),
    ],
    ids=["batch", "bare-array", "one-event", "labels"],
)
async def test_a_refused_item_goes_to_the_dlq_byte_for_byte(raw: bytes, kind: Any) -> None:
    producer = FakeProducer()
    reply = await make(producer).ingest(kind, raw)
    assert reply.status in (207, 422)
    (dead,) = producer.dead
    expected = ODD_ITEM if kind == "events" else raw[raw.index(b"[") + 1 : raw.rindex(b"]")]
    assert dead["original"] == expected


async def test_every_refused_item_of_a_batch_keeps_its_own_bytes_and_a_conflict_too() -> None:
    producer = FakeProducer()
    handler = make(producer)
    first = loan_event()
    assert (await handler.ingest("events", body([first]))).status == 200
    conflict = b'{"type":"loan_application","event_id":"%s","payload":%s}' % (
        first["event_id"].encode(),
        orjson.dumps({**first["payload"], "salary": 1e3}).replace(b"1000.0", b"1e3"),
    )
    items = [b'"not an object \\u00e9"', b"[1, 2.50]", orjson.dumps(loan_event()), conflict, b"{}"]
    reply = await handler.ingest("events", b"[" + b" , ".join(items) + b"]")
    assert reply.status == 207 and reply.body["rejected"] == 4
    assert [d["original"] for d in producer.dead] == [items[0], items[1], items[3], items[4]]


# --- backpressure is bounded in bytes too ------------------------------------------------------------


async def test_in_flight_is_bounded_in_bytes_as_well_as_records() -> None:
    producer = FakeProducer(hold=True)
    handler = make(producer, max_in_flight=1000, max_in_flight_bytes=60_000)

    def big_batch() -> bytes:
        return body([loan_event(customer_id="x" * 9_000) for _ in range(4)])  # ~37 kB, 4 records

    big = big_batch()
    assert len(big) > 30_000
    holding = asyncio.create_task(handler.ingest("events", big))
    await producer.wait_pending(4)
    assert handler.in_flight.count == 4 and handler.in_flight.bytes >= len(big) - 4

    refused = await handler.ingest("events", big_batch())  # 4 + 4 records is fine, 2 x 37 kB is not
    assert refused.status == 503 and refused.body["error"] == "overloaded"
    assert "bytes" in refused.body["message"]
    assert len(producer.sent) == 4
    small = asyncio.create_task(handler.ingest("events", body([loan_event()])))  # fits: sent, held
    await producer.wait_pending(5)

    producer.release()
    assert (await holding).status == 200 and (await small).status == 200
    await asyncio.sleep(0)
    assert (handler.in_flight.count, handler.in_flight.bytes) == (0, 0)
    producer.hold = False
    assert (await handler.ingest("events", big_batch())).status == 200
    assert (handler.in_flight.count, handler.in_flight.bytes) == (0, 0)


async def test_bytes_of_refused_records_and_unsent_records_are_given_back() -> None:
    producer = FakeProducer()
    handler = make(producer, max_in_flight_bytes=50_000)

    def mixed() -> bytes:
        return body([loan_event(), loan_event(age="x" * 1000), loan_event()])

    assert (await handler.ingest("events", mixed())).status == 207
    assert (await handler.ingest("events", b"[1, ")).status == 400
    await asyncio.sleep(0)
    assert (handler.in_flight.count, handler.in_flight.bytes) == (0, 0)

    async def broken_send(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("producer stopped")

    producer.send = broken_send  # type: ignore[method-assign]
    assert (await handler.ingest("events", mixed())).status == 503
    await asyncio.sleep(0)
    assert (handler.in_flight.count, handler.in_flight.bytes) == (0, 0)


def test_the_bytes_bound_is_a_setting_that_fits_the_largest_body() -> None:
    from pydantic import ValidationError

    from driftline_ingestion.config import IngestionSettings

    assert IngestionSettings().max_in_flight_bytes == 64 * 1024 * 1024
    assert IngestionSettings(max_in_flight_bytes=2_000_000).max_in_flight_bytes == 2_000_000
    with pytest.raises(ValidationError, match="max_in_flight_bytes"):
        IngestionSettings(max_body_bytes=1_000_000, max_in_flight_bytes=500_000)
