"""Helpers for tests that run against the real stack.

A test *namespace* isolates a test from every other one on the same stack: its own topic prefix
(all twelve catalog topics, created with their schemas), its own PostgreSQL database and its own
MinIO bucket. Services under test get ``namespace.stack`` as their StackSettings.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient

from driftline.events import Event
from driftline.kafka import partitions_of
from driftline.serde import AvroSerde, SchemaRegistryClient
from driftline.settings import StackSettings
from driftline.stack import drop_isolated_database, init_isolated

ROOT = Path(__file__).resolve().parents[1]


def _with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{database}"))


SECURITY_FIELDS = [
    f
    for f in StackSettings.model_fields
    if f.startswith(("kafka_s", "schema_registry_", "postgres_ssl", "minio_ca")) and f != "schema_registry_url"
]


def security_env(s: StackSettings) -> dict[str, str]:
    """The security settings of ``s`` (TLS, SASL, CAs) as DRIFTLINE_* variables of a subprocess."""
    env = {}
    for name in SECURITY_FIELDS:
        value = getattr(s, name)
        if value is not None:
            env[f"DRIFTLINE_{name.upper()}"] = (
                value.get_secret_value() if hasattr(value, "get_secret_value") else str(value)
            )
    return env


@dataclass
class Namespace:
    name: str
    stack: StackSettings

    @property
    def prefix(self) -> str:
        return self.stack.topic_prefix

    def env(self) -> dict[str, str]:
        """Environment for a service subprocess bound to this namespace."""
        s = self.stack
        return {
            **os.environ,
            **security_env(s),
            "DRIFTLINE_KAFKA_BOOTSTRAP_SERVERS": s.kafka_bootstrap_servers,
            "DRIFTLINE_SCHEMA_REGISTRY_URL": s.schema_registry_url,
            "DRIFTLINE_POSTGRES_DSN": s.postgres_dsn.get_secret_value(),
            "DRIFTLINE_MINIO_ENDPOINT": s.minio_endpoint,
            "DRIFTLINE_MINIO_ACCESS_KEY": s.minio_access_key,
            "DRIFTLINE_MINIO_SECRET_KEY": s.minio_secret_key.get_secret_value(),
            "DRIFTLINE_ARTIFACT_BUCKET": s.artifact_bucket,
            "DRIFTLINE_TOPIC_PREFIX": s.topic_prefix,
            **({"DRIFTLINE_PROJECT_FILE": str(s.project_file)} if s.project_file else {}),
        }


async def create_namespace(base: StackSettings, label: str = "t") -> Namespace:
    name = f"{label}{uuid.uuid4().hex[:8]}"
    return Namespace(name, await init_isolated(base, name))


async def drop_namespace(ns: Namespace, base: StackSettings) -> None:
    """Drop the namespace's database and delete its topics (best effort: a suite creates a few
    thousand partitions otherwise, which the one broker of the test stack keeps open, and reloads
    whenever an outage test restarts it)."""
    await drop_isolated_database(base, ns.stack)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(_delete_topics(base, ns.name), timeout=30)


async def _delete_topics(base: StackSettings, name: str) -> None:
    admin = AIOKafkaAdminClient(**base.kafka.client_kwargs(), client_id="driftline-tests")
    await admin.start()
    try:
        topics = [t for t in await admin.list_topics() if t.startswith(name)]
        if topics:
            await admin.delete_topics(topics)
    finally:
        await admin.close()


def broker_down_reason(stack: StackSettings) -> str | None:
    """Why the stack's broker cannot serve the rest of the session (None: it accepts connections):
    the test stack's Kafka log tail, so the cause shows where the run ended."""
    host, port = stack.kafka_bootstrap_servers.split(",")[0].rsplit(":", 1)
    deadline = time.monotonic() + 45  # a broker restarting after an outage test is back well within this
    while True:
        try:
            socket.create_connection((host, int(port)), timeout=2).close()
            return None
        except OSError as exc:
            if time.monotonic() > deadline:
                error = exc
                break
            time.sleep(1)
    state = os.environ.get("DRIFTLINE_STATE_DIR")
    log = Path(state) / "logs" / "kafka.log" if state else None
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:]) if log and log.is_file() else "(no log)"
    return f"the broker at {stack.kafka_bootstrap_servers} is down ({error}); the last lines of {log}:\n{tail}"


class TopicReader:
    """Reads a namespace's topics from their current end: what is produced after it is created."""

    def __init__(self, ns: Namespace, topics: Sequence[str]) -> None:
        self.ns = ns
        self.topics = list(topics)
        self.registry = SchemaRegistryClient.from_settings(ns.stack)
        self.serde = AvroSerde(self.registry, topic_prefix=ns.prefix)
        self.consumer = AIOKafkaConsumer(**ns.stack.kafka.client_kwargs(), enable_auto_commit=False, group_id=None)
        self.events: list[Event] = []
        self.headers: dict[str, dict[str, bytes]] = {}  # event_id → the record's Kafka headers

    async def start(self, from_beginning: bool = False) -> TopicReader:
        await self.consumer.start()
        tps = await partitions_of(self.ns.stack.kafka, [self.ns.prefix + t for t in self.topics])
        self.consumer.assign(tps)
        if from_beginning:
            await self.consumer.seek_to_beginning(*tps)
        else:
            await self.consumer.seek_to_end(*tps)
            for tp in tps:  # resolve positions now, before anything is produced
                await self.consumer.position(tp)
        return self

    async def stop(self) -> None:
        await self.consumer.stop()
        await self.registry.close()

    async def poll(self, timeout_s: float = 0.5) -> list[Event]:
        batch = await self.consumer.getmany(timeout_ms=int(timeout_s * 1000))
        new = []
        for records in batch.values():
            for rec in records:
                topic = rec.topic[len(self.ns.prefix) :]
                value, sid = await self.serde.decode(rec.value, topic)
                self.headers[str(value.get("event_id"))] = dict(rec.headers or ())
                new.append(
                    Event(topic, rec.partition, rec.offset, rec.key, value, rec.value or b"", sid, rec.timestamp)
                )
        self.events += new
        return new

    async def wait_for(
        self, predicate: Callable[[list[Event]], bool], timeout_s: float = 30, what: str = "events"
    ) -> list[Event]:
        deadline = time.monotonic() + timeout_s
        while not predicate(self.events):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s}s waiting for {what}; saw {len(self.events)} events")
            await self.poll()
        return self.events

    def on(self, topic: str) -> list[Event]:
        return [e for e in self.events if e.topic == topic]


RESERVED_PORTS = Path("/proc/sys/net/ipv4/ip_local_reserved_ports")


def free_port() -> int:
    """A free loopback port, reserved (best effort: where the setting is writable) so the kernel
    never hands it out as a client's source port: a service restarted on it can bind it again
    (see ``reserve_ports`` in infra/stack.sh)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    try:
        current = RESERVED_PORTS.read_text().strip()
        RESERVED_PORTS.write_text(f"{current},{port}" if current else str(port))
    except OSError:
        pass
    return port


async def eventually(check: Callable[[], Awaitable[Any]], timeout_s: float = 30, interval_s: float = 0.3) -> Any:
    """Retry ``check`` (which raises AssertionError) until it passes or time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return await check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(interval_s)


class ServiceProcess:
    """A service started as a real subprocess (``python -m <module>``) bound to a namespace."""

    def __init__(self, module: str, ns: Namespace, env: dict[str, str] | None = None, port: int | None = None) -> None:
        self.module = module
        self.ns = ns
        self.port = port or free_port()
        self.extra_env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = ROOT / ".state" / "test-logs" / f"{module}-{ns.name}-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, env_prefix: str) -> ServiceProcess:
        env = {**self.ns.env(), f"{env_prefix}PORT": str(self.port), **self.extra_env}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT
        )
        return self

    async def wait_ready(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient() as client:
            while True:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise AssertionError(
                        f"{self.module} exited with {self.proc.returncode}; log: {self.log_path}\n"
                        + self.log_path.read_text()[-3000:]
                    )
                try:
                    r = await client.get(f"{self.url}/readyz", timeout=5)
                    if r.status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"{self.module} not ready in {timeout_s}s; log: {self.log_path}")
                await asyncio.sleep(0.3)

    def stop(self, sig: int = 15, timeout_s: float = 30) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def kill(self) -> None:
        """SIGKILL: no shutdown hook runs (a crash)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


async def dead_letter_as_a_consumer(
    producer: Any,
    serde: AvroSerde,
    ns: Namespace,
    payload: dict[str, Any],
    *,
    entity_id: str,
    partition: int,
    offset: int,
) -> tuple[dict[str, Any], bytes]:
    """What a consumer of events.raw does with a record its handler refused: the raw event (made
    here, with ``payload``) is dead-lettered with its original bytes and position. Returns the
    record and those bytes; waits for the DLQ's acknowledgement."""
    from aiokafka.structs import ConsumerRecord

    from driftline.catalog import EVENTS_RAW

    record = {
        **producer.envelope(),
        "event_type": "loan_application",
        "entity_id": entity_id,
        "payload": payload,
        "source": "http",
    }
    original = serde.encode(EVENTS_RAW, record)
    at = ConsumerRecord(
        topic=ns.prefix + EVENTS_RAW, partition=partition, offset=offset, timestamp=0, timestamp_type=0,
        key=entity_id.encode(), value=original, checksum=None, serialized_key_size=len(entity_id),
        serialized_value_size=len(original), headers=(),
    )  # fmt: skip
    delivered = await producer.dead_letter(
        source="consumer:features",
        reason="handler error: boom",
        error_type="handler_error",
        original=original,
        record=at,
    )
    await delivered
    return record, original


@dataclass
class CollectedSpan:
    service: str
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    kind: int  # the OTLP enum: 2 server, 4 producer, 5 consumer
    attributes: dict[str, Any]


class OtlpCollector:
    """An OTLP/HTTP trace receiver kept in memory: services export to it through the standard
    variables (:meth:`env`), as they would to an OpenTelemetry Collector."""

    def __init__(self) -> None:
        import http.server
        import threading

        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
            ExportTraceServiceResponse,
        )

        self.spans: list[CollectedSpan] = []
        collector = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = ExportTraceServiceRequest.FromString(body)
                for resource_spans in request.resource_spans:
                    attrs = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                    for scope_spans in resource_spans.scope_spans:
                        for s in scope_spans.spans:
                            collector.spans.append(
                                CollectedSpan(
                                    service=attrs.get("service.name", ""),
                                    trace_id=s.trace_id.hex(),
                                    span_id=s.span_id.hex(),
                                    parent_id=s.parent_span_id.hex(),
                                    name=s.name,
                                    kind=s.kind,
                                    attributes={a.key: _otlp_value(a.value) for a in s.attributes},
                                )
                            )
                payload = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.port = free_port()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def env(self) -> dict[str, str]:
        return {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{self.port}",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_BSP_SCHEDULE_DELAY": "500",
        }

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def ancestors(self, span: CollectedSpan) -> list[CollectedSpan]:
        """The span's parent, its parent's parent, … as far as they were exported."""
        by_id = {s.span_id: s for s in self.spans}
        chain = []
        while span.parent_id and span.parent_id in by_id:
            span = by_id[span.parent_id]
            chain.append(span)
        return chain


def _otlp_value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


SERVICES = ("ingestion", "features", "training", "registry", "deployment", "monitoring")


@contextlib.asynccontextmanager
async def running_services(
    ns: Namespace, env: dict[str, str] | None = None, *, timeout_s: float = 180
) -> AsyncIterator[dict[str, ServiceProcess]]:
    """The six services as real processes bound to ``ns``, ready; stopped (SIGTERM) on exit."""
    procs = {name: ServiceProcess(f"driftline_{name}", ns, env=env) for name in SERVICES}
    try:
        for name, proc in procs.items():
            proc.start(f"DRIFTLINE_{name.upper()}_")
        await asyncio.gather(*(p.wait_ready(timeout_s=timeout_s) for p in procs.values()))
        yield procs
    finally:
        for proc in procs.values():
            proc.stop()
