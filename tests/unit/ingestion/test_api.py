"""The HTTP API in process (fake producer): auth, limits, docs, metrics, and random JSON never a 5xx."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from driftline_ingestion.config import IngestionSettings
from tests.fakes import FakeProducer
from tests.unit.ingestion.fakes import LOAN, in_process_app, loan_event

TOKEN = "unit-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class Harness:
    def __init__(self, **settings: Any) -> None:
        self.producer = FakeProducer()
        self.settings = IngestionSettings(**settings)
        self.app = in_process_app(self.producer, self.settings, tokens=[f"tester={TOKEN}"], max_keys=1000)


@pytest.fixture(scope="module")
def harness() -> Iterator[tuple[Harness, TestClient]]:
    h = Harness(max_batch=50, max_body_bytes=16 * 1024)
    with TestClient(h.app) as client:
        yield h, client


ANSWER_KEYS = {"accepted", "duplicates", "rejected", "dead_lettered", "failed", "results", "errors", "error", "message"}


def test_publishing_needs_a_bearer_token(harness: tuple[Harness, TestClient]) -> None:
    h, client = harness
    before = len(h.producer.sent), len(h.producer.dead)
    for path in ("/v1/events", "/v1/labels"):
        missing = client.post(path, json=loan_event())
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        wrong = client.post(path, json=loan_event(), headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 403
        # The documented shape of every answer (README "Answers"), like any other refusal.
        for answer, error in ((missing.json(), "unauthorized"), (wrong.json(), "forbidden")):
            assert set(answer) == ANSWER_KEYS, answer
            assert answer["error"] == error and answer["message"]
            assert (answer["accepted"], answer["rejected"], answer["dead_lettered"], answer["results"]) == (0, 0, 0, [])
            assert answer["errors"] == [
                {"index": None, "field": None, "error_type": error, "reason": answer["message"]}
            ]
    assert (len(h.producer.sent), len(h.producer.dead)) == before  # refused before the body is read


def test_an_event_goes_through_with_its_source(harness: tuple[Harness, TestClient]) -> None:
    h, client = harness
    r = client.post("/v1/events", json=loan_event(), headers={**AUTH, "X-Driftline-Source": "cli"})
    assert r.status_code == 200 and r.json()["accepted"] == 1
    assert h.producer.sent[-1][1]["source"] == "cli"
    r = client.post("/v1/events", json=loan_event(), headers={**AUTH, "X-Driftline-Source": "Not A Source!"})
    assert h.producer.sent[-1][1]["source"] == "http"


def test_an_oversize_body_is_413_and_its_beginning_is_dead_lettered(harness: tuple[Harness, TestClient]) -> None:
    h, client = harness
    big = orjson.dumps({"events": [loan_event(customer_id="x" * 2000) for _ in range(20)]})
    assert len(big) > 16 * 1024
    r = client.post("/v1/events", content=big, headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 413
    assert r.json()["error"] == "body_too_large" and r.json()["dead_lettered"] == 1
    dead = h.producer.dead[-1]
    assert dead["error_type"] == "body_too_large" and big.startswith(dead["original"]) and dead["original"]


def test_a_streamed_body_without_length_is_limited_too(harness: tuple[Harness, TestClient]) -> None:
    _, client = harness

    def chunks() -> Iterator[bytes]:
        yield b'{"events": ['
        for _ in range(100):
            yield orjson.dumps(loan_event(customer_id="y" * 500)) + b","
        yield b"{}]}"

    r = client.post("/v1/events", content=chunks(), headers=AUTH)
    assert r.status_code == 413


def test_schemas_docs_and_metrics_are_served(harness: tuple[Harness, TestClient]) -> None:
    _, client = harness
    schemas = client.get("/v1/schemas").json()
    assert schemas["events"][0]["type"] == "loan_application"
    assert schemas["labels"]["classes"] == ["deny", "approve"]
    assert schemas["limits"]["max_batch"] == 50
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/v1/events"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "salary" in orjson.dumps(body).decode()
    assert {"200", "207", "401", "413", "422", "503"} <= set(spec["paths"]["/v1/events"]["post"]["responses"])
    metrics = client.get("/metrics").text
    for name in (
        "driftline_ingestion_accepted_total",
        "driftline_ingestion_rejected_total",
        "driftline_ingestion_dead_lettered_total",
        "driftline_ingestion_request_seconds",
    ):
        assert name in metrics


# --- random input never makes a 5xx ---------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
field_values = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10) | json_values
)
near_events = st.fixed_dictionaries(
    {"type": st.sampled_from(["loan_application", "other"]) | field_values},
    optional={
        "event_id": st.uuids().map(str) | field_values,
        "event_time": st.datetimes().map(lambda d: d.isoformat()) | st.integers() | field_values,
        "correlation_id": field_values,
        "payload": st.fixed_dictionaries({}, optional={k: field_values | st.just(v) for k, v in LOAN.items()})
        | field_values,
        "extra": field_values,
    },
)


_label_values = {
    "event_id": st.uuids().map(str) | st.uuids().map(lambda u: str(u).upper()),
    "entity_id": st.text(min_size=1, max_size=12) | st.text(min_size=199, max_size=202),
    "label": st.sampled_from(["approve", "deny"]) | st.sampled_from(["Approve", "", "maybe"]),
}
_label_options = {
    "label_id": st.uuids().map(str) | field_values,
    "event_time": st.datetimes().map(lambda d: d.isoformat())
    | st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat())
    | st.integers()
    | field_values,
    "correlation_id": st.text(max_size=8) | field_values,
}
near_labels = (
    # the three required fields present, each well-formed or not, the others optional
    st.fixed_dictionaries(
        {k: v | field_values for k, v in _label_values.items()},
        optional={**_label_options, "extra": field_values},
    )
    # any of them missing
    | st.fixed_dictionaries({}, optional={**_label_values, **_label_options, "extra": field_values})
)


def _dumps(value: Any) -> bytes:
    return json.dumps(value).encode()  # the stdlib writes any integer (and Infinity, which is not JSON)


bodies = (
    json_values.map(_dumps)
    | near_events.map(_dumps)
    | st.lists(near_events | json_values, min_size=0, max_size=8).map(lambda xs: _dumps({"events": xs}))
    | st.binary(max_size=64)
)
label_bodies = (
    near_labels.map(_dumps)
    | st.lists(near_labels | json_values, min_size=0, max_size=8).map(lambda xs: _dumps({"labels": xs}))
    | st.lists(near_labels, min_size=1, max_size=8).map(_dumps)
    | st.lists(near_labels, min_size=1, max_size=3).map(lambda xs: _dumps({"labels": xs, "events": []}))
)


def _check_answer(client: TestClient, path: str, raw: bytes) -> dict[str, Any]:
    r = client.post(path, content=raw, headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code < 500, r.text
    answer: dict[str, Any] = r.json()
    assert {"accepted", "rejected", "errors", "results"} <= set(answer)
    if r.status_code >= 400:
        assert answer["errors"] and all(e["reason"] for e in answer["errors"])
    return answer


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=bodies, path=st.sampled_from(["/v1/events", "/v1/labels"]))
def test_random_json_never_gets_a_5xx(harness: tuple[Harness, TestClient], raw: bytes, path: str) -> None:
    _, client = harness
    _check_answer(client, path, raw)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=label_bodies)
def test_random_labels_never_get_a_5xx(harness: tuple[Harness, TestClient], raw: bytes) -> None:
    h, client = harness
    before = len(h.producer.sent)
    answer = _check_answer(client, "/v1/labels", raw)
    stored = h.producer.sent[before:]
    assert all(topic == "labels" for topic, _, _ in stored)  # the fake checked each against LabelRecorded
    assert answer["accepted"] + answer["duplicates"] + answer["rejected"] + answer["failed"] >= len(stored)
