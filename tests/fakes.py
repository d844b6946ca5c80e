"""In-memory stand-ins for the library's Kafka producer, serde and object store, shared by the unit tests.

They keep the contracts a handler relies on: the producer refuses a record that does not fit its
topic (as :func:`driftline.producer.to_wire` and the Avro encoding would), hands back delivery futures
and fails on demand; the serde refuses bytes it cannot decode with a ``DecodeError``; the object
store checks an object's SHA-256 like :meth:`driftline.artifacts.ArtifactStore.get`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import cache
from typing import Any, TypeVar

import orjson
from fastavro.validation import validate

from driftline.artifacts import ArtifactIntegrityError, ArtifactNotFound, ArtifactRef, json_bytes, sha256_hex
from driftline.catalog import Catalog, Topic, default_catalog, load_schema_json, parsed_schema
from driftline.events import Envelope, envelope
from driftline.producer import Outgoing, kafka_key, to_wire
from driftline.records import Record
from driftline.serde import DecodeError

R = TypeVar("R", bound=Record)

_DEAD_LETTER_OPTIONS = frozenset({"record", "correlation_id", "attempts"})


class FakeProducer:
    """What :class:`driftline.producer.EventProducer` offers a handler, recorded instead of produced.

    ``send``/``publish`` check the record against its topic (type and schema) and record
    ``(topic, record, key)`` in ``sent``; ``send_raw`` records in ``raw``; ``dead_letter`` records
    its keyword arguments in ``dead``. Deliveries are acknowledged at once, unless ``hold`` (they
    wait in ``pending`` for :meth:`release`), ``fail`` (they fail as if the broker were down) or
    ``failures`` (that many of the next ones fail). A failed delivery raises ``error()``.
    """

    def __init__(
        self,
        name: str = "test",
        *,
        hold: bool = False,
        fail: bool = False,
        failures: int = 0,
        error: Callable[[], BaseException] = lambda: ConnectionError("broker down"),
        catalog: Catalog | None = None,
    ) -> None:
        self.name = name
        self.hold = hold
        self.fail = fail
        self.failures = failures
        self.error = error
        self.catalog = catalog or default_catalog()
        self.sent: list[tuple[str, Outgoing, bytes | None]] = []
        self.raw: list[tuple[str, bytes, bytes | None]] = []
        self.dead: list[dict[str, Any]] = []
        self.pending: list[asyncio.Future[Any]] = []
        self._changed = asyncio.Event()

    def envelope(self, **kwargs: Any) -> Envelope:
        return envelope(self.name, **kwargs)

    def _delivery(self) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.fail or self.failures > 0:
            self.failures = max(0, self.failures - 1)
            fut.set_exception(self.error())
        elif self.hold:
            self.pending.append(fut)
            self._changed.set()
        else:
            fut.set_result(None)
        return fut

    def _enqueue(self, topic: str, record: Outgoing, key: bytes | None) -> asyncio.Future[Any]:
        t = self.catalog[topic]
        wire = to_wire(t, record)  # TypeError for a typed record of another topic
        validate(wire, parsed_schema(t.record))  # ValidationError where the encoding would fail
        self.sent.append((topic, record, key if key is not None else kafka_key(t, wire)))
        return self._delivery()

    async def send(self, topic: str, record: Outgoing, *, key: bytes | None = None) -> asyncio.Future[Any]:
        return self._enqueue(topic, record, key)

    async def send_many(self, topic: str, records: Sequence[Outgoing]) -> list[asyncio.Future[Any]]:
        """Like ``send`` for each record, acknowledged as one batch (one future for all)."""
        if not records:
            return []
        for record in records:
            t = self.catalog[topic]
            wire = to_wire(t, record)
            validate(wire, parsed_schema(t.record))
            self.sent.append((topic, record, kafka_key(t, wire)))
        return [self._delivery()]

    async def send_raw(self, topic: str, value: bytes, *, key: bytes | None = None) -> asyncio.Future[Any]:
        self.raw.append((topic, value, key))
        return self._delivery()

    async def publish(self, topic: str, record: Outgoing, *, key: bytes | None = None) -> Any:
        return await self._enqueue(topic, record, key)

    async def publish_many(self, items: Sequence[tuple[str, Outgoing]]) -> list[Any]:
        futures = [self._enqueue(topic, record, None) for topic, record in items]
        return list(await asyncio.gather(*futures))

    async def flush(self) -> None:
        return None

    async def dead_letter(
        self, *, source: str, reason: str, error_type: str, original: bytes, **options: Any
    ) -> asyncio.Future[Any]:
        """Records the keyword arguments as given (``record``, ``correlation_id``, ``attempts`` optional)."""
        if unknown := options.keys() - _DEAD_LETTER_OPTIONS:
            raise TypeError(f"dead_letter() got unexpected keyword arguments {sorted(unknown)}")
        self.dead.append(
            {"source": source, "reason": reason, "error_type": error_type, "original": original, **options}
        )
        return self._delivery()

    def on(self, topic: str) -> list[Outgoing]:
        """The records sent or published on ``topic``, in order."""
        return [r for t, r, _ in self.sent if t == topic]

    def records(self, record_type: type[R]) -> list[R]:
        """The typed records of one type sent or published, in order."""
        return [r for _, r, _ in self.sent if isinstance(r, record_type)]

    async def wait_pending(self, n: int) -> None:
        """Until ``n`` deliveries wait for their acknowledgement (with ``hold``)."""
        while len(self.pending) < n:
            self._changed.clear()
            await self._changed.wait()

    def release(self, ok: bool = True) -> None:
        """Acknowledge (or fail) every delivery held so far."""
        for fut in self.pending:
            if not fut.done():
                if ok:
                    fut.set_result(None)
                else:
                    fut.set_exception(self.error())
        self.pending.clear()


class FakeArtifactStore:
    """An object store in memory, with :class:`driftline.artifacts.ArtifactStore`'s reads and writes.

    ``add``/``add_json`` store synchronously, for a test's setup; ``objects`` may be edited to
    tamper with or delete what was stored.
    """

    def __init__(self, bucket: str = "b") -> None:
        self.bucket = bucket
        self.objects: dict[str, bytes] = {}

    def add(self, key: str, data: bytes) -> ArtifactRef:
        self.objects[key] = data
        return ArtifactRef(self.bucket, key, sha256_hex(data), len(data))

    def add_json(self, key: str, doc: Any) -> ArtifactRef:
        return self.add(key, json_bytes(doc))

    async def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> ArtifactRef:
        return self.add(key, data)

    async def put_json(self, key: str, doc: Any) -> ArtifactRef:
        return self.add_json(key, doc)

    async def get(self, key: str, sha256: str) -> bytes:
        if key not in self.objects:
            raise ArtifactNotFound(f"no object {self.bucket}/{key}")
        data = self.objects[key]
        actual = sha256_hex(data)
        if actual != sha256.lower():
            raise ArtifactIntegrityError(f"artifact {self.bucket}/{key} has SHA-256 {actual}, expected {sha256}")
        return data

    async def get_json(self, key: str, sha256: str) -> Any:
        return json.loads(await self.get(key, sha256))


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return int(value.timestamp() * 1000)  # as Avro's timestamp-millis
    if isinstance(value, bytes):
        return value.decode("latin-1")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


@cache
def _decoders(record: str) -> dict[str, Any]:
    """Top-level fields of a record type that JSON cannot carry as such: field → how to decode it."""
    out: dict[str, Any] = {}
    for f in load_schema_json(record)["fields"]:
        for t in f["type"] if isinstance(f["type"], list) else [f["type"]]:
            if t == "bytes":
                out[f["name"]] = lambda v: v.encode("latin-1")
            elif isinstance(t, dict) and t.get("logicalType") == "timestamp-millis":
                out[f["name"]] = lambda v: datetime.fromtimestamp(v / 1000, UTC)
    return out


class JsonSerde:
    """:class:`driftline.serde.AvroSerde`'s interface on JSON, without a registry (schema id 1).

    Encoding does not check the schema (a test may write a record that does not fit); timestamps
    travel as epoch milliseconds and bytes as latin-1 text, and decode back to datetimes and bytes
    where the topic's schema says so. What is not a JSON object does not decode.
    """

    def __init__(self, topic_prefix: str = "", catalog: Catalog | None = None) -> None:
        self.topic_prefix = topic_prefix
        self.catalog = catalog or default_catalog()

    async def prepare(self, *topics: str) -> None:
        return None

    def topic(self, name: str) -> Topic:
        return self.catalog[name]

    def topic_or_none(self, name: str) -> Topic | None:
        return self.catalog.get(name)

    def encode(self, topic: str, record: dict[str, Any]) -> bytes:
        return orjson.dumps(record, default=_json_default, option=orjson.OPT_PASSTHROUGH_DATETIME)

    async def decode_many(
        self, items: Sequence[bytes | None], topic: str | None = None
    ) -> list[tuple[dict[str, Any], int] | DecodeError]:
        out: list[tuple[dict[str, Any], int] | DecodeError] = []
        for data in items:
            try:
                out.append(await self.decode(data, topic))
            except DecodeError as exc:
                out.append(exc)
        return out

    async def decode(self, data: bytes | None, topic: str | None = None) -> tuple[dict[str, Any], int]:
        try:
            value = orjson.loads(data or b"")
        except orjson.JSONDecodeError as exc:
            raise DecodeError(f"not JSON: {exc}") from exc
        if not isinstance(value, dict):
            raise DecodeError("record is not an object")
        t = self.topic_or_none(topic) if topic is not None else None
        for name, decode in _decoders(t.record).items() if t is not None else ():
            if value.get(name) is not None:
                value[name] = decode(value[name])
        return value, 1
