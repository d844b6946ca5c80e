"""Avro serde in the Confluent wire format, backed by a Confluent-compatible schema registry.

Wire format: magic byte ``0``, 4-byte big-endian schema id, Avro binary body. Stock tools
(kcat ``-s avro``, Kafka Connect) read every Driftline topic with it.

Writer schemas are looked up (or registered) once per topic at start-up; writer schemas of
incoming records are fetched by id once and cached, so the hot path never calls the registry.
Records written with an older registered schema are resolved to the local (reader) schema.
"""

from __future__ import annotations

import contextlib
import io
import json
import ssl
import struct
from collections.abc import Callable, Sequence
from typing import Any

import fastavro
import httpx
from fastavro.validation import ValidationError, validate

from driftline.avro_fast import compile_encoder
from driftline.catalog import (
    Catalog,
    Topic,
    canonical_schema_str,
    default_catalog,
    load_schema_json,
    parsed_schema,
)
from driftline.jsonsafe import NotFinite, Sanitiser, avro_sanitiser
from driftline.logging import get_logger

log = get_logger(__name__)

MAGIC = 0
_HEADER = struct.Struct(">bI")
_CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


class SerdeError(Exception):
    """Base of encode/decode errors."""


class DecodeError(SerdeError):
    """Bytes that are not a decodable Driftline record (a poison record)."""


class EncodeError(SerdeError):
    """A record that does not match its topic's schema; the message names the field."""


class RegistryError(Exception):
    """The schema registry refused a request or is unreachable (transient for callers)."""


class SchemaRegistryClient:
    """The subset of the Confluent schema-registry API that Driftline uses."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 10.0,
        auth: tuple[str, str] | None = None,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self._url = url.rstrip("/")
        self._http = httpx.AsyncClient(
            timeout=timeout, headers={"Content-Type": _CONTENT_TYPE}, auth=auth, verify=verify
        )
        self._by_id: dict[int, Any] = {}

    @classmethod
    def from_settings(cls, stack: Any) -> SchemaRegistryClient:
        """The registry of a :class:`~driftline.settings.StackSettings`: its basic auth and CA."""
        from driftline.connect import tls_context

        auth = None
        if stack.schema_registry_username is not None:
            auth = (stack.schema_registry_username, stack.schema_registry_password.get_secret_value())
        verify: ssl.SSLContext | bool = True
        if stack.schema_registry_ca_file is not None:
            verify = tls_context(stack.schema_registry_ca_file)
        return cls(stack.schema_registry_url, auth=auth, verify=verify)

    async def close(self) -> None:
        await self._http.aclose()

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        try:
            resp = await self._http.request(method, f"{self._url}{path}", json=body)
        except httpx.HTTPError as exc:
            raise RegistryError(f"schema registry unreachable at {self._url}: {exc}") from exc
        if resp.status_code >= 400:
            raise RegistryError(f"{method} {path} → {resp.status_code}: {resp.text[:300]}")
        return resp.json()

    async def register(self, subject: str, schema: str) -> int:
        """Register (idempotent: an identical schema gets its existing id)."""
        data = await self._call("POST", f"/subjects/{subject}/versions", {"schema": schema})
        return int(data["id"])

    async def lookup(self, subject: str, schema: str) -> int | None:
        """Id of ``schema`` under ``subject``, or None when it is not registered there."""
        try:
            data = await self._call("POST", f"/subjects/{subject}", {"schema": schema})
        except RegistryError as exc:
            if "404" in str(exc):
                return None
            raise
        return int(data["id"])

    async def schema_by_id(self, schema_id: int) -> Any:
        """Parsed writer schema for an id (cached for the process)."""
        cached = self._by_id.get(schema_id)
        if cached is None:
            data = await self._call("GET", f"/schemas/ids/{schema_id}")
            cached = fastavro.parse_schema(json.loads(data["schema"]))
            self._by_id[schema_id] = cached
        return cached

    async def set_compatibility(self, subject: str, level: str = "BACKWARD") -> None:
        await self._call("PUT", f"/config/{subject}", {"compatibility": level})

    async def is_compatible(self, subject: str, schema: str) -> bool:
        data = await self._call("POST", f"/compatibility/subjects/{subject}/versions/latest", {"schema": schema})
        return bool(data["is_compatible"])

    async def subjects(self) -> list[str]:
        return list(await self._call("GET", "/subjects"))

    async def delete_subject(self, subject: str) -> None:
        await self._call("DELETE", f"/subjects/{subject}")
        await self._call("DELETE", f"/subjects/{subject}?permanent=true")

    async def ping(self) -> None:
        await self._call("GET", "/subjects")


class AvroSerde:
    """Encodes records for topics of the catalog and decodes any Confluent-framed record."""

    def __init__(
        self,
        registry: SchemaRegistryClient,
        catalog: Catalog | None = None,
        *,
        topic_prefix: str = "",
        auto_register: bool = True,
    ) -> None:
        self.registry = registry
        self.catalog = catalog or default_catalog()
        self.topic_prefix = topic_prefix
        self._auto_register = auto_register
        self._writer: dict[str, tuple[int, Any, bytes]] = {}  # topic → (id, parsed, header)
        self._extra: dict[str, Topic] = {}  # topics outside the catalog (tests, tools)
        self._readers: dict[tuple[int, str], Any] = {}  # (writer id, topic) → reader schema or None
        self._finite: dict[str, Sanitiser] = {}  # topic → what makes its records carry finite numbers only
        self._compiled: dict[str, Callable[[dict[str, Any]], bytes] | None] = {}  # topic → fast encoder

    def bind(self, topic: str, record: str, key: str = "event_id") -> None:
        """Let a topic outside the catalog carry ``record`` (for tests and tools)."""
        self._extra[topic] = Topic(topic, record, key, "any", 1, 1, -1)

    def topic(self, name: str) -> Topic:
        return self._extra.get(name) or self.catalog[name]

    def topic_or_none(self, name: str) -> Topic | None:
        return self._extra.get(name) or self.catalog.get(name)

    async def prepare(self, *topics: str) -> None:
        """Resolve the writer schema id of each topic (registering it when allowed)."""
        for name in topics:
            if name in self._writer:
                continue
            t = self.topic(name)
            text = canonical_schema_str(t.record)
            subject = t.subject(self.topic_prefix)
            schema_id = await self.registry.lookup(subject, text)
            if schema_id is None:
                if not self._auto_register:
                    raise RegistryError(f"schema of {name} ({t.record}) is not registered under {subject}")
                schema_id = await self.registry.register(subject, text)
            self._writer[name] = (schema_id, parsed_schema(t.record), _HEADER.pack(MAGIC, schema_id))
            self._finite[name] = avro_sanitiser(load_schema_json(t.record))
            self._compiled[name] = compile_encoder(self._writer[name][1])

    def encode(self, topic: str, record: dict[str, Any]) -> bytes:
        try:
            _, schema, header = self._writer[topic]
        except KeyError:
            raise SerdeError(f"serde not prepared for topic {topic!r}: call prepare() at start-up") from None
        try:
            record = self._finite[topic](record, schema.get("name", "record"))
        except NotFinite as exc:
            raise EncodeError(f"record does not match {schema.get('name', 'schema')}: {exc}") from exc
        compiled = self._compiled.get(topic)
        if compiled is not None:  # the same bytes, faster (driftline.avro_fast); else fastavro decides
            with contextlib.suppress(ValueError, TypeError, OverflowError, struct.error):
                return header + compiled(record)
        buf = io.BytesIO()
        buf.write(header)
        try:
            fastavro.schemaless_writer(buf, schema, record)
        except Exception as exc:
            raise EncodeError(self._explain(schema, record, exc)) from exc
        return buf.getvalue()

    @staticmethod
    def _explain(schema: Any, record: dict[str, Any], exc: Exception) -> str:
        try:
            validate(record, schema, raise_errors=True)
        except ValidationError as verr:
            return f"record does not match {schema.get('name', 'schema')}: {'; '.join(map(str, verr.errors))}"
        except Exception as vexc:
            return f"record does not match {schema.get('name', 'schema')}: {vexc}"
        return f"record does not match {schema.get('name', 'schema')}: {exc}"

    def _reader(self, schema_id: int, writer: Any, topic: str) -> Any:
        """Local schema to resolve to, or None when the writer's schema is the local one."""
        key = (schema_id, topic)
        if key not in self._readers:
            t = self._extra.get(topic) or self.catalog.get(topic)
            local = parsed_schema(t.record) if t is not None else None
            self._readers[key] = None if local is None or local == writer else local
        return self._readers[key]

    async def decode(self, data: bytes | None, topic: str | None = None) -> tuple[dict[str, Any], int]:
        """Decode one framed record; ``topic`` selects the reader schema (schema evolution)."""
        schema_id = _schema_id(data)
        writer = await self._writer_schema(schema_id)
        return self._decode_body(data, schema_id, writer, topic), schema_id

    async def decode_many(
        self, items: Sequence[bytes | None], topic: str | None = None
    ) -> list[tuple[dict[str, Any], int] | DecodeError]:
        """Decode a batch: each item's value and schema id, or the :class:`DecodeError` that
        refuses it (one bad record does not fail the others). The writer schemas are looked up
        once per distinct id, then every body is decoded without a further await. An unreachable
        registry raises (:class:`RegistryError`), for the whole batch to be retried."""
        ids: list[int | DecodeError] = []
        for data in items:
            try:
                ids.append(_schema_id(data))
            except DecodeError as exc:
                ids.append(exc)
        writers: dict[int, Any] = {}
        for known in {i for i in ids if isinstance(i, int)}:
            with contextlib.suppress(DecodeError):  # unknown to the registry: each of its records says so
                writers[known] = await self._writer_schema(known)
        out: list[tuple[dict[str, Any], int] | DecodeError] = []
        for data, schema_id in zip(items, ids, strict=True):
            if isinstance(schema_id, DecodeError):
                out.append(schema_id)
            elif schema_id not in writers:
                out.append(DecodeError(f"schema id {schema_id} is unknown to the registry"))
            else:
                try:
                    out.append((self._decode_body(data, schema_id, writers[schema_id], topic), schema_id))
                except DecodeError as exc:
                    out.append(exc)
        return out

    async def _writer_schema(self, schema_id: int) -> Any:
        try:
            return await self.registry.schema_by_id(schema_id)
        except RegistryError as exc:
            if "404" in str(exc):
                raise DecodeError(f"schema id {schema_id} is unknown to the registry") from exc
            raise

    def _decode_body(self, data: Any, schema_id: int, writer: Any, topic: str | None) -> dict[str, Any]:
        reader = self._reader(schema_id, writer, topic) if topic is not None else None
        try:
            value = fastavro.schemaless_reader(io.BytesIO(memoryview(data)[_HEADER.size :]), writer, reader)
        except Exception as exc:
            raise DecodeError(f"Avro body does not decode with schema id {schema_id}: {exc}") from exc
        if not isinstance(value, dict):
            raise DecodeError("record is not an Avro record")
        return value


def _schema_id(data: bytes | None) -> int:
    """The schema id of a Confluent-framed record (its header checked)."""
    if not data or len(data) < _HEADER.size:
        raise DecodeError("record is empty or shorter than the 5-byte Confluent header")
    magic, schema_id = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise DecodeError(f"unknown magic byte {magic} (expected 0: Confluent wire format)")
    return int(schema_id)
