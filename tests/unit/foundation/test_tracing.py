"""Trace context across Kafka, with an in-memory exporter: an HTTP request's trace goes on in the
records it produces; a consumed record's trace goes on in what its handler produces, also in a
batch (by causation); the spans carry the messaging semantic conventions."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from driftline import tracing


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing.setup("unit", exporter, batch=False)
    yield exporter
    tracing.setup("unit")  # back to a tracer without an exporter


def trace_id_of(headers: list[tuple[str, bytes]]) -> str:
    (name, value), *_ = headers
    assert name == "traceparent"
    version, trace_id, span_id, flags = value.decode().split("-")
    assert version == "00" and int(flags, 16) & 1  # sampled
    assert len(trace_id) == 32 and len(span_id) == 16
    return trace_id


def test_an_http_request_s_trace_goes_on_in_the_records_it_produces(spans: InMemorySpanExporter) -> None:
    caller = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    with tracing.http_server_span("POST", "/v1/events", [(b"traceparent", caller)]):
        headers = tracing.record_headers("events.raw", {"event_id": "e1", "causation_id": None})
    assert trace_id_of(headers) == "0af7651916cd43dd8448eb211c80319c"
    send, server = spans.get_finished_spans()
    assert server.kind == SpanKind.SERVER and server.parent is not None and server.parent.span_id == 0xB7AD6B7169203331
    assert send.kind == SpanKind.PRODUCER and send.name == "send events.raw"
    assert send.parent is not None and send.parent.span_id == server.context.span_id
    assert send.attributes is not None
    assert send.attributes["messaging.system"] == "kafka"
    assert send.attributes["messaging.destination.name"] == "events.raw"
    assert send.attributes["messaging.message.id"] == "e1"


def test_a_batch_handler_s_outputs_continue_the_trace_of_the_record_they_come_from(
    spans: InMemorySpanExporter,
) -> None:
    a = tracing.record_headers("events.raw", {"event_id": "a"})
    b = tracing.record_headers("events.raw", {"event_id": "b"})
    assert trace_id_of(a) != trace_id_of(b)  # two requests, two traces
    batch = [
        tracing.Consumed("events.raw", 2, 41, a, "a"),
        tracing.Consumed("events.raw", 3, 7, b, "b"),
    ]
    with tracing.processing(batch, "features"):
        out_a = tracing.record_headers("features.vectors", {"event_id": "va", "causation_id": "a"})
        out_b = tracing.record_headers("features.vectors", {"event_id": "vb", "causation_id": "b"})
        other = tracing.record_headers("drift.detected", {"event_id": "d", "causation_id": "not-in-the-batch"})
    assert trace_id_of(out_a) == trace_id_of(a)
    assert trace_id_of(out_b) == trace_id_of(b)
    assert trace_id_of(other) == trace_id_of(b)  # no cause in the batch: the batch's last record
    process = [s for s in spans.get_finished_spans() if s.kind == SpanKind.CONSUMER]
    assert [s.name for s in process] == ["process events.raw", "process events.raw"]
    assert process[0].attributes == {
        "messaging.system": "kafka",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": "events.raw",
        "messaging.destination.partition.id": "2",
        "messaging.kafka.offset": 41,
        "messaging.consumer.group.name": "features",
        "messaging.message.id": "a",
    }


def test_a_record_without_traceparent_starts_a_trace_and_failures_mark_the_spans(
    spans: InMemorySpanExporter,
) -> None:
    with pytest.raises(RuntimeError), tracing.processing([tracing.Consumed("labels", 0, 1, None, "x")], "g"):
        raise RuntimeError("handler failed")
    (span,) = spans.get_finished_spans()
    assert span.parent is None and not span.status.is_ok


def test_tracing_can_be_disabled_altogether(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert tracing.setup("unit") is None
    assert tracing.record_headers("events.raw", {"event_id": "e"}) == []  # the no-op tracer
    monkeypatch.delenv("OTEL_SDK_DISABLED")
    tracing.setup("unit")
    assert tracing.record_headers("events.raw", {"event_id": "e"}) != []


@pytest.mark.parametrize(
    ("env", "exported"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, False),
    ],
)
def test_otlp_export_is_off_unless_the_standard_variables_ask(env: dict[str, str], exported: bool) -> None:
    assert tracing.otlp_configured(env) is exported


def test_without_an_exporter_context_still_flows_through_non_recording_spans() -> None:
    assert tracing.setup("unit") is None  # nothing exported: no SDK provider
    root = tracing.record_headers("events.raw", {"event_id": "a"})
    trace_id = trace_id_of(root)  # a new trace, sampled as the SDK's default sampler would
    unsampled = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"
    batch = [
        tracing.Consumed("events.raw", 0, 1, root, "a"),
        tracing.Consumed("events.raw", 0, 2, [("traceparent", unsampled)], "b"),
    ]
    with tracing.processing(batch, "features"):
        out_a = tracing.record_headers("features.vectors", {"event_id": "va", "causation_id": "a"})
        out_b = tracing.record_headers("features.vectors", {"event_id": "vb", "causation_id": "b"})
    assert trace_id_of(out_a) == trace_id
    assert out_a[0][1].split(b"-")[2] != root[0][1].split(b"-")[2]  # a span of its own
    version, tid, _, flags = out_b[0][1].decode().split("-")
    assert (version, tid, flags) == ("00", "0af7651916cd43dd8448eb211c80319c", "00")  # the caller's flags kept
    caller = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    with tracing.http_server_span("POST", "/v1/events", [(b"traceparent", caller)]):
        assert (
            trace_id_of(tracing.record_headers("events.raw", {"event_id": "e"})) == "0af7651916cd43dd8448eb211c80319c"
        )
