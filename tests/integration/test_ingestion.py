"""Ingestion on the real stack: a service process, the real Kafka, schema registry and topics."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from driftline.catalog import EVENTS_DLQ, EVENTS_RAW, LABELS
from driftline.events import Event
from driftline.settings import StackSettings
from tests.support import Namespace, ServiceProcess, TopicReader, create_namespace, drop_namespace

TOKEN = "integration-secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LOAN = {
    "customer_id": "c-1",
    "salary": 61000,
    "commission": 0.0,
    "age": 35,
    "elevel": 1,
    "car": 4,
    "zipcode": 2,
    "hvalue": 210000.0,
    "hyears": 8,
    "loan": 150000.0,
}


def loan_event(**payload: Any) -> dict[str, Any]:
    return {"type": "loan_application", "event_id": str(uuid.uuid4()), "payload": {**LOAN, **payload}}


class Ingestion:
    def __init__(self, ns: Namespace, proc: ServiceProcess) -> None:
        self.ns = ns
        self.proc = proc
        self.http = httpx.AsyncClient(base_url=proc.url, timeout=60)

    async def post(self, path: str, body: Any = None, *, raw: bytes | None = None, auth: bool = True) -> httpx.Response:
        content = raw if raw is not None else orjson.dumps(body)
        headers = {"Content-Type": "application/json", **(AUTH if auth else {})}
        return await self.http.post(path, content=content, headers=headers)

    async def reader(self, *topics: str) -> TopicReader:
        return await TopicReader(self.ns, list(topics or (EVENTS_RAW, LABELS, EVENTS_DLQ))).start()


@pytest.fixture(scope="module")
async def ingestion(base_stack: StackSettings) -> AsyncIterator[Ingestion]:
    ns = await create_namespace(base_stack, "ing")
    proc = ServiceProcess(
        "driftline_ingestion",
        ns,
        env={
            "DRIFTLINE_API_TOKENS": f"tester={TOKEN}",
            "DRIFTLINE_INGESTION_MAX_BATCH": "200",
            "DRIFTLINE_INGESTION_MAX_BODY_BYTES": "200000",
        },
    ).start("DRIFTLINE_INGESTION_")
    try:
        await proc.wait_ready()
        svc = Ingestion(ns, proc)
        yield svc
        await svc.http.aclose()
    finally:
        proc.stop()  # SIGTERM: uvicorn runs the lifespan shutdown (the producer flushes) and exits
        await drop_namespace(ns, base_stack)
    assert "Application shutdown complete" in proc.log_path.read_text()


async def read_to_end(reader: TopicReader) -> list[Event]:
    """Everything produced so far: poll until every partition reached its current end offset."""
    tps = list(reader.consumer.assignment())
    ends = await reader.consumer.end_offsets(tps)
    while True:
        positions = {tp: await reader.consumer.position(tp) for tp in tps}
        if all(positions[tp] >= ends[tp] for tp in tps):
            return reader.events
        await reader.poll()


async def test_a_single_event_is_stored_only_after_kafka_acknowledged(ingestion: Ingestion) -> None:
    reader = await ingestion.reader(EVENTS_RAW)
    try:
        event = {**loan_event(customer_id="alice"), "event_time": "2025-05-01T08:30:00Z", "correlation_id": "req-1"}
        r = await ingestion.post("/v1/events", event)
        assert r.status_code == 200, r.text
        assert r.json()["results"] == [{"index": 0, "status": "accepted", "event_id": event["event_id"]}]
        (stored,) = await read_to_end(reader)  # acknowledged before the answer: already in the log
        assert stored.key == b"alice"
        v = stored.value
        assert (v["event_id"], v["event_type"], v["entity_id"], v["source"], v["producer"]) == (
            event["event_id"],
            "loan_application",
            "alice",
            "http",
            "ingestion",
        )
        assert v["correlation_id"] == "req-1" and v["event_time"].isoformat() == "2025-05-01T08:30:00+00:00"
        assert v["payload"] == {**LOAN, "customer_id": "alice", "salary": 61000.0}
    finally:
        await reader.stop()


async def test_a_caller_s_trace_goes_on_in_the_headers_of_the_records_it_produced(ingestion: Ingestion) -> None:
    caller_trace, caller_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    reader = await ingestion.reader(EVENTS_RAW)
    try:
        event = loan_event(customer_id="traced")
        r = await ingestion.http.post(
            "/v1/events",
            content=orjson.dumps(event),
            headers={"Content-Type": "application/json", **AUTH, "traceparent": f"00-{caller_trace}-{caller_span}-01"},
        )
        assert r.status_code == 200, r.text
        await read_to_end(reader)
        version, trace_id, parent, _ = reader.headers[event["event_id"]]["traceparent"].decode().split("-")
        assert (version, trace_id) == ("00", caller_trace)  # the caller's trace, through the service
        assert parent != caller_span  # a span of the service's own (the send), child of the request's
        untraced = loan_event(customer_id="untraced")
        assert (await ingestion.post("/v1/events", untraced)).status_code == 200
        await read_to_end(reader)
        assert reader.headers[untraced["event_id"]]["traceparent"].decode().split("-")[1] != caller_trace
    finally:
        await reader.stop()


async def test_a_batch_and_its_labels_are_stored(ingestion: Ingestion) -> None:
    reader = await ingestion.reader(EVENTS_RAW, LABELS)
    try:
        events = [loan_event(customer_id=f"b{i % 7}", loan=float(i)) for i in range(120)]
        r = await ingestion.post("/v1/events", {"events": events})
        assert r.status_code == 200 and r.json()["accepted"] == 120
        labels = [
            {"event_id": e["event_id"], "entity_id": e["payload"]["customer_id"], "label": "deny"} for e in events[:30]
        ]
        r = await ingestion.post("/v1/labels", labels)  # a bare array works too
        assert r.status_code == 200 and r.json()["accepted"] == 30
        await read_to_end(reader)
        assert sorted(e.event_id for e in reader.on(EVENTS_RAW)) == sorted(e["event_id"] for e in events)
        stored_labels = reader.on(LABELS)
        assert {e.value["labelled_event_id"] for e in stored_labels} == {e["event_id"] for e in events[:30]}
        assert all(e.value["label"] == "deny" and e.key == e.value["entity_id"].encode() for e in stored_labels)
        # Per entity, the order of the batch is the order in the partition.
        for i in range(7):
            mine = [e.value["payload"]["loan"] for e in reader.on(EVENTS_RAW) if e.key == f"b{i}".encode()]
            assert mine == sorted(mine)
    finally:
        await reader.stop()


BAD_INPUTS = {
    "malformed_json": (b'{"type": "loan_application", "payload": {', 400, "malformed_json", None),
    "wrong_type": (orjson.dumps(loan_event(age="forty")), 422, "wrong_type", "payload.age"),
    "missing_field": (
        orjson.dumps({"type": "loan_application", "payload": {k: v for k, v in LOAN.items() if k != "salary"}}),
        422,
        "missing_field",
        "payload.salary",
    ),
    "unknown_event_type": (orjson.dumps({**loan_event(), "type": "car_rental"}), 422, "unknown_event_type", "type"),
    "unknown_field": (orjson.dumps(loan_event(colour="blue")), 422, "unknown_field", "payload.colour"),
    "oversize_body": (
        orjson.dumps({"events": [loan_event(customer_id="z" * 1000) for _ in range(250)]}),
        413,
        "body_too_large",
        None,
    ),
    "batch_too_large": (orjson.dumps([loan_event() for _ in range(201)]), 413, "batch_too_large", "events"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
async def test_each_bad_input_is_a_4xx_naming_the_field_and_is_kept_in_the_dlq(ingestion: Ingestion, case: str) -> None:
    raw, status, error_type, field = BAD_INPUTS[case]
    reader = await ingestion.reader(EVENTS_RAW, EVENTS_DLQ)
    try:
        r = await ingestion.post("/v1/events", raw=raw)
        assert r.status_code == status, r.text
        body = r.json()
        assert body["error"] == error_type and body["accepted"] == 0 and body["dead_lettered"] == 1
        error = next(e for e in body["errors"] if e["error_type"] == error_type)
        assert error["field"] == field and error["reason"]
        events = await read_to_end(reader)
        assert reader.on(EVENTS_RAW) == []
        (dead,) = [e for e in events if e.topic == EVENTS_DLQ]
        d = dead.value
        assert (d["source"], d["error_type"]) == ("http:/v1/events", error_type)
        assert error["reason"] in d["reason"]
        if case == "oversize_body":
            assert raw.startswith(d["original"]) and 0 < len(d["original"]) < len(raw)
            assert str(len(raw)) in d["reason"]
        else:  # the whole body, or the one refused event (here the whole body too), byte for byte
            assert d["original"] == raw
    finally:
        await reader.stop()


async def test_a_refused_item_of_a_batch_is_kept_in_the_dlq_byte_for_byte(ingestion: Ingestion) -> None:
    reader = await ingestion.reader(EVENTS_RAW, EVENTS_DLQ)
    odd = (
        b'{ "type": "loan_application", "payload": {"customer_id": "caf\\u00e9", "salary": 1.0e2, "commission": 0E0,'
        b' "age": "forty", "elevel": 2, "car": 7, "zipcode": 3, "hvalue": 1.5e5, "hyears": 12, "loan": 2.0E+4} }'
    )
    try:
        raw = b'{"events": [\n  ' + orjson.dumps(loan_event()) + b",\n  " + odd + b"\n]}"
        r = await ingestion.post("/v1/events", raw=raw)
        assert r.status_code == 207, r.text
        await read_to_end(reader)
        (dead,) = reader.on(EVENTS_DLQ)
        assert dead.value["original"] == odd
    finally:
        await reader.stop()


async def test_in_a_batch_valid_events_go_through_and_invalid_ones_are_reported_by_index(ingestion: Ingestion) -> None:
    reader = await ingestion.reader(EVENTS_RAW, EVENTS_DLQ)
    try:
        batch = [loan_event(), loan_event(hyears="long"), loan_event(), {"type": "nope", "payload": {}}, loan_event()]
        r = await ingestion.post("/v1/events", {"events": batch})
        assert r.status_code == 207
        body = r.json()
        assert (body["accepted"], body["rejected"], body["dead_lettered"]) == (3, 2, 2)
        assert [(e["index"], e["field"]) for e in body["errors"]] == [(1, "payload.hyears"), (3, "type")]
        assert [x["status"] for x in body["results"]] == ["accepted", "rejected", "accepted", "rejected", "accepted"]
        await read_to_end(reader)
        assert {e.event_id for e in reader.on(EVENTS_RAW)} == {batch[i]["event_id"] for i in (0, 2, 4)}
        assert sorted(e.value["error_type"] for e in reader.on(EVENTS_DLQ)) == ["unknown_event_type", "wrong_type"]
    finally:
        await reader.stop()


async def test_a_retried_batch_yields_no_duplicate_downstream(ingestion: Ingestion) -> None:
    reader = await ingestion.reader(EVENTS_RAW)
    try:
        events = [loan_event(customer_id=f"r{i}") for i in range(60)]
        first = await ingestion.post("/v1/events", {"events": events})
        # The client did not see the answer and retries, twice at once.
        again = await asyncio.gather(*(ingestion.post("/v1/events", {"events": events}) for _ in range(2)))
        assert first.json()["accepted"] == 60
        for r in again:
            assert r.status_code == 200 and (r.json()["accepted"], r.json()["duplicates"]) == (0, 60)
        stored = await read_to_end(reader)
        assert len(stored) == 60
        assert sorted(e.event_id for e in stored) == sorted(e["event_id"] for e in events)
    finally:
        await reader.stop()


async def test_publishing_is_refused_without_a_valid_token(ingestion: Ingestion) -> None:
    reader = await ingestion.reader()
    try:
        r = await ingestion.post("/v1/events", loan_event(), auth=False)
        assert r.status_code == 401 and r.json()["error"] == "unauthorized" and r.json()["accepted"] == 0
        r = await ingestion.http.post("/v1/labels", json={}, headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 403 and r.json()["error"] == "forbidden" and r.json()["errors"][0]["reason"]
        r = await ingestion.http.post("/v1/events", json=loan_event(), headers={"Authorization": "Basic dGVzdA=="})
        assert r.status_code == 401
        assert await read_to_end(reader) == []  # nothing stored, nothing dead-lettered
    finally:
        await reader.stop()


async def test_a_label_for_an_unknown_class_is_refused_and_kept(ingestion: Ingestion) -> None:
    reader = await ingestion.reader(LABELS, EVENTS_DLQ)
    try:
        r = await ingestion.post("/v1/labels", {"event_id": str(uuid.uuid4()), "entity_id": "c-1", "label": "maybe"})
        assert r.status_code == 422
        assert r.json()["errors"][0]["field"] == "label" and "['deny', 'approve']" in r.json()["errors"][0]["reason"]
        (dead,) = await read_to_end(reader)
        assert dead.topic == EVENTS_DLQ and dead.value["source"] == "http:/v1/labels"
    finally:
        await reader.stop()


async def test_schemas_docs_and_metrics(ingestion: Ingestion) -> None:
    schemas = (await ingestion.http.get("/v1/schemas")).json()
    assert [t["type"] for t in schemas["events"]] == ["loan_application"]
    assert schemas["limits"]["max_batch"] == 200
    assert (await ingestion.http.get("/docs")).status_code == 200
    assert "/v1/labels" in (await ingestion.http.get("/openapi.json")).json()["paths"]
    metrics = (await ingestion.http.get("/metrics")).text
    accepted = [
        line for line in metrics.splitlines() if line.startswith('driftline_ingestion_accepted_total{kind="events"}')
    ]
    assert accepted and float(accepted[0].split()[-1]) > 0


# --- property: random JSON never makes the service fail -------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=16,
)
_field = _json | st.sampled_from(list(LOAN.values()))
_event = st.fixed_dictionaries(
    {"type": st.just("loan_application") | _json},
    optional={
        "event_id": st.uuids().map(str) | _json,
        "event_time": st.datetimes().map(lambda d: d.isoformat()) | _json,
        "payload": st.fixed_dictionaries({}, optional={k: _field for k in LOAN}) | _json,
        "correlation_id": _json,
    },
)
_bodies = (
    _json.map(lambda v: json.dumps(v).encode())
    | st.lists(_event | _json, max_size=6).map(lambda xs: json.dumps({"events": xs}).encode())
    | _event.map(lambda v: json.dumps(v).encode())
    | st.binary(max_size=48)
)


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(raw=_bodies, path=st.sampled_from(["/v1/events", "/v1/labels"]))
def test_random_json_at_the_endpoint_is_never_a_5xx(ingestion: Ingestion, raw: bytes, path: str) -> None:
    r = httpx.post(
        ingestion.proc.url + path, content=raw, headers={**AUTH, "Content-Type": "application/json"}, timeout=60
    )
    assert r.status_code < 500, r.text
    assert r.status_code in (200, 207, 400, 413, 422)
    assert "accepted" in r.json()
    assert ingestion.proc.proc is not None and ingestion.proc.proc.poll() is None
