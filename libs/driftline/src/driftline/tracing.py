"""Trace context across Kafka: W3C ``traceparent`` in the headers of every record a service
produces, continued from the HTTP request or the consumed record that caused it.

OpenTelemetry SDK spans with the messaging semantic conventions: a PRODUCER span ``send <topic>``
per record sent, a CONSUMER span ``process <topic>`` per record handled (``messaging.system``
kafka, destination, partition, offset, consumer group), a SERVER span per HTTP request. Which
consumed record a produced one continues: the one its ``causation_id`` names, when it is in the
batch being handled (so batch handlers keep one trace per event); else the current span (the
HTTP request, or the batch's last record).

Export is off by default. Then nothing would record a span, so the tracer makes non-recording
spans that carry the trace on (the parent's trace id and flags with a new span id; a new sampled
trace where there is no parent): every record still carries a ``traceparent``, and a service that
does export continues the same traces, at about a third of the cost of SDK spans that are made,
filled with attributes and dropped (services/features/README.md, "Benchmark"). The standard
variables turn on OTLP export: ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, or ``OTEL_TRACES_EXPORTER=otlp``), with the exporter's own
``OTEL_EXPORTER_OTLP_*`` settings (headers, timeout, certificate), ``OTEL_SERVICE_NAME``,
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER`` and ``OTEL_TRACES_SAMPLER_ARG``,
``OTEL_BSP_*``; ``OTEL_SDK_DISABLED=true`` turns tracing off altogether.

Tools (the SDK's Kafka publisher, the CLI) do not set a tracer up: they use the process's global
OpenTelemetry provider, so an application that configured OpenTelemetry itself propagates its
trace into the records it publishes through the SDK.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
from collections.abc import Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, SpanKind, StatusCode, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

TRACEPARENT = "traceparent"
_PROPAGATOR = TraceContextTextMapPropagator()
_provider: TracerProvider | None = None
_tracer: trace.Tracer | None = None
# event_id → the context of the span that handles that consumed record (see :func:`processing`).
_CAUSES: ContextVar[Mapping[str, Context] | None] = ContextVar("driftline_trace_causes", default=None)


def otlp_configured(env: Mapping[str, str] = os.environ) -> bool:
    """Whether the standard variables ask for OTLP export of traces."""
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return "otlp" in {e.strip() for e in exporter.split(",")}
    return bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def setup(service: str, exporter: SpanExporter | None = None, *, batch: bool = True) -> TracerProvider | None:
    """Make this process's tracer (a service calls it once at start; tests give an exporter).

    Without ``exporter``, the OTLP exporter when :func:`otlp_configured`; with neither, a
    :class:`PropagatingTracer`, so trace context still flows through Kafka. Returns the SDK
    provider that records spans: None when nothing is exported or OTEL_SDK_DISABLED=true."""
    global _provider, _tracer
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        _provider, _tracer = None, None
        return None
    if _provider is not None:
        _provider.shutdown()
    if exporter is None and otlp_configured():
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()  # reads OTEL_EXPORTER_OTLP_* itself
    if exporter is None:
        _provider, _tracer = None, PropagatingTracer()  # nothing would record a span: carry context only
        return None
    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: f"driftline-{service}"}
    provider = TracerProvider(resource=Resource.create(attributes))
    provider.add_span_processor(BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter))
    _provider, _tracer = provider, provider.get_tracer("driftline")
    return provider


class PropagatingTracer(trace.Tracer):
    """A tracer for a process that exports no spans: each span is a non-recording one that
    continues its parent's trace (trace id, flags and state, a new span id) or starts a sampled
    trace, as the SDK's default sampler would, so context flows through Kafka and HTTP exactly as
    with the SDK and a downstream service that exports records the same traces."""

    def start_span(
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Any = None,
        links: Any = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> Span:
        parent = trace.get_current_span(context).get_span_context()
        span_id = random.getrandbits(64) or 1
        if parent.is_valid:
            return NonRecordingSpan(
                SpanContext(parent.trace_id, span_id, False, parent.trace_flags, parent.trace_state)
            )
        return NonRecordingSpan(SpanContext(random.getrandbits(128) or 1, span_id, False, _SAMPLED))

    @contextlib.contextmanager
    def start_as_current_span(  # type: ignore[override]  # the API's own decorator is private; same protocol
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Any = None,
        links: Any = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
        end_on_exit: bool = True,
    ) -> Iterator[Span]:
        span = self.start_span(name, context)
        with trace.use_span(span, end_on_exit=end_on_exit) as current:
            yield current


_SAMPLED = TraceFlags(TraceFlags.SAMPLED)


def shutdown() -> None:
    """Flush and stop the exporter (a service's shutdown)."""
    if _provider is not None:
        _provider.shutdown()


def tracer() -> trace.Tracer:
    """This process's tracer; without :func:`setup`, the global one (an SDK or CLI user's own
    OpenTelemetry set-up, or the no-op one)."""
    return _tracer if _tracer is not None else trace.get_tracer("driftline")


def context_of(headers: Sequence[tuple[str, bytes]] | None) -> Context | None:
    """The trace context a record's headers carry (None without a traceparent)."""
    carrier = {k.lower(): v.decode("latin-1") for k, v in headers or () if k.lower() in (TRACEPARENT, "tracestate")}
    if TRACEPARENT not in carrier:
        return None
    if len(carrier) == 1:  # the common case, parsed here: the propagator's general path costs ~4x
        match = _TRACEPARENT_00.fullmatch(carrier[TRACEPARENT])
        if match is not None:
            trace_id, span_id, flags = int(match[1], 16), int(match[2], 16), int(match[3], 16)
            if trace_id and span_id:
                remote = SpanContext(trace_id, span_id, True, TraceFlags(flags))
                return trace.set_span_in_context(NonRecordingSpan(remote))
    return _PROPAGATOR.extract(carrier)


_TRACEPARENT_00 = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


def record_headers(topic: str, record: Mapping[str, Any]) -> list[tuple[str, bytes]]:
    """A PRODUCER span for sending ``record`` to ``topic`` (physical name) and the headers that
    carry it: the traceparent every produced record has (none with tracing disabled)."""
    causes = _CAUSES.get()
    parent = causes.get(str(record.get("causation_id"))) if causes else None
    if isinstance(_tracer, PropagatingTracer):  # nothing recorded: the header straight from the parent
        context = _tracer.start_span("", context=parent).get_span_context()
        headers = [
            (TRACEPARENT, f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}".encode())
        ]
        if context.trace_state:
            headers.append(("tracestate", context.trace_state.to_header().encode("latin-1")))
        return headers
    span = tracer().start_span(
        f"send {topic}",
        context=parent,
        kind=SpanKind.PRODUCER,
        attributes={
            "messaging.system": "kafka",
            "messaging.operation.type": "send",
            "messaging.operation.name": "send",
            "messaging.destination.name": topic,
            "messaging.message.id": str(record.get("event_id", "")),
        },
    )
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
    span.end()
    return [(k, v.encode("latin-1")) for k, v in carrier.items()]


@dataclass(frozen=True)
class Consumed:
    """A consumed record, as :func:`processing` needs it."""

    topic: str  # physical
    partition: int
    offset: int
    headers: Sequence[tuple[str, bytes]] | None
    event_id: str | None = None


@contextlib.contextmanager
def processing(records: Sequence[Consumed], group: str | None) -> Iterator[list[Span]]:
    """CONSUMER spans, one per record, each continuing the trace its headers carry, open while
    the records are handled; what the handler produces continues them (see the module doc)."""
    spans: list[Span] = []
    causes: dict[str, Context] = {}
    for rec in records:
        attributes: dict[str, Any] = {
            "messaging.system": "kafka",
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.destination.name": rec.topic,
            "messaging.destination.partition.id": str(rec.partition),
            "messaging.kafka.offset": rec.offset,
        }
        if group is not None:
            attributes["messaging.consumer.group.name"] = group
        if rec.event_id is not None:
            attributes["messaging.message.id"] = rec.event_id
        span = tracer().start_span(
            f"process {rec.topic}", context=context_of(rec.headers), kind=SpanKind.CONSUMER, attributes=attributes
        )
        spans.append(span)
        if rec.event_id is not None:
            causes[rec.event_id] = trace.set_span_in_context(span)
    causes_token = _CAUSES.set(causes)
    context_token = otel_context.attach(trace.set_span_in_context(spans[-1])) if spans else None
    try:
        yield spans
    except BaseException as exc:
        for span in spans:
            span.set_status(StatusCode.ERROR, type(exc).__name__)
        raise
    finally:
        if context_token is not None:
            otel_context.detach(context_token)
        _CAUSES.reset(causes_token)
        for span in spans:
            span.end()


@contextlib.contextmanager
def http_server_span(method: str, path: str, headers: Sequence[tuple[bytes, bytes]]) -> Iterator[Span]:
    """A SERVER span for an HTTP request, continuing the caller's ``traceparent`` if it sent one."""
    carrier = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in headers}
    parent = _PROPAGATOR.extract(carrier) if TRACEPARENT in carrier else None
    with tracer().start_as_current_span(
        f"{method} {path}",
        context=parent,
        kind=SpanKind.SERVER,
        attributes={"http.request.method": method, "url.path": path},
    ) as span:
        yield span
