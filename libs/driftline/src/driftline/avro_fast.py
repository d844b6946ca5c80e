"""A compiled Avro encoder for flat records: the hot topics' records written without fastavro's
per-value union resolution.

fastavro resolves every value of a union by validating it against the branches in turn; for the
platform's feature vectors (a map of ``["null", "double", "string"]`` values) and raw events (a
map of five-branch unions) that is most of the encoding time: about 2 µs per map entry, where the
record's other fields together take a few. :func:`compile_encoder` turns a parsed schema into a
function that writes the same bytes from the same record, choosing each union branch from the
value's Python type as fastavro's validators would.

It covers records of primitive fields, ``timestamp-millis`` longs, unions of primitives, and maps
and arrays of those; for any other schema it returns ``None``. The compiled function raises on
anything it does not handle exactly (a naive datetime, an int too large, a value of an unexpected
type, a missing field without a default); :class:`driftline.serde.AvroSerde` then encodes the
record with fastavro, so what fastavro accepts or refuses, and its error message, is unchanged.
A property test checks that the bytes are fastavro's for every record both accept.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

Writer = Callable[[Any], bytes]  # a value's encoding

PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "string", "bytes"})
_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1
_LONG_MIN, _LONG_MAX = -(2**63), 2**63 - 1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DOUBLE = struct.Struct("<d").pack
_FLOAT = struct.Struct("<f").pack
_SMALL = [bytes([n]) for n in range(128)]  # varints of 0..127: one byte
_TRUE, _FALSE, _ZERO = b"\x01", b"\x00", b"\x00"


class Unsupported(ValueError):
    """A value the compiled encoder does not write exactly as fastavro would."""


def varint(n: int) -> bytes:
    """Avro's zig-zag varint of a long."""
    z = (n << 1) ^ (n >> 63)
    if z < 128:
        return _SMALL[z]
    out = bytearray()
    while z > 127:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def compile_encoder(schema: Any) -> Callable[[dict[str, Any]], bytes] | None:
    """The encoder of a parsed record schema, or None when the schema holds a type it does not
    cover (named types other than the top-level record, logical types but ``timestamp-millis``)."""
    if not isinstance(schema, dict) or schema.get("type") != "record":
        return None
    fields: list[tuple[str, bool, Any, Writer]] = []
    for f in schema["fields"]:
        t = f["type"]
        if t in ("float", "double"):  # fastavro converts a record's float field with float() first
            writer: Writer | None = _required_float(t)
        else:
            writer = _compile(t)
        if writer is None:
            return None
        fields.append((str(f["name"]), "default" in f, f.get("default"), writer))

    def encode(record: dict[str, Any]) -> bytes:
        out: list[bytes] = []
        for name, has_default, default, write in fields:
            if name in record:
                out.append(write(record[name]))
            elif has_default:
                out.append(write(default))
            else:
                raise Unsupported(f"no value for {name}")
        return b"".join(out)

    return encode


def _kind(t: Any) -> str | None:
    """The primitive a type is (``"timestamp-millis"`` for that logical long), or None."""
    if isinstance(t, str):
        return t if t in PRIMITIVES else None
    if isinstance(t, dict):
        base = t.get("type")
        logical = t.get("logicalType")
        if logical is None:
            return base if isinstance(base, str) and base in PRIMITIVES else None
        if logical == "timestamp-millis" and base == "long":
            return "timestamp-millis"
    return None


def _compile(t: Any) -> Writer | None:
    kind = _kind(t)
    if kind is not None:
        return _PRIMITIVE_WRITERS[kind]
    if isinstance(t, list):
        return _union(t)
    if isinstance(t, dict):
        if t.get("type") == "map":
            values = _compile(t["values"])
            return None if values is None else _map(values)
        if t.get("type") == "array":
            items = _compile(t["items"])
            return None if items is None else _array(items)
    return None


# -- primitives: each refuses what it does not write exactly as fastavro -------------------------


def _null(value: Any) -> bytes:
    if value is not None:
        raise Unsupported("not null")
    return b""


def _boolean(value: Any) -> bytes:
    if value is True:
        return _TRUE
    if value is False:
        return _FALSE
    raise Unsupported("not a bool")


def _long(value: Any) -> bytes:
    if type(value) is not int or not _LONG_MIN <= value <= _LONG_MAX:
        raise Unsupported("not a long")
    return varint(value)


def _int(value: Any) -> bytes:
    if type(value) is not int or not _INT_MIN <= value <= _INT_MAX:
        raise Unsupported("not an int")
    return varint(value)


def _timestamp_millis(value: Any) -> bytes:
    if type(value) is datetime:
        if value.tzinfo is None:  # fastavro reads a naive datetime as local time
            raise Unsupported("naive datetime")
        d = value - _EPOCH
        value = (d.days * 86400 + d.seconds) * 1000 + int(d.microseconds / 1000)
    return _long(value)


def _double(value: Any) -> bytes:
    t = type(value)
    if t is not float and t is not int:
        raise Unsupported("not a double")
    return _DOUBLE(value)


def _float(value: Any) -> bytes:
    t = type(value)
    if t is not float and t is not int:
        raise Unsupported("not a float")
    return _FLOAT(value)


def _string(value: Any) -> bytes:
    if type(value) is not str:
        raise Unsupported("not a str")
    data = value.encode()
    return varint(len(data)) + data


def _bytes(value: Any) -> bytes:
    if type(value) is not bytes:
        raise Unsupported("not bytes")
    return varint(len(value)) + value


def _required_float(kind: str) -> Writer:
    pack = _DOUBLE if kind == "double" else _FLOAT

    def write(value: Any) -> bytes:
        t = type(value)
        if t is not float and t is not int:
            raise Unsupported(f"not a {kind}")
        return pack(value)

    return write


_PRIMITIVE_WRITERS: dict[str, Writer] = {
    "null": _null,
    "boolean": _boolean,
    "int": _int,
    "long": _long,
    "timestamp-millis": _timestamp_millis,
    "float": _float,
    "double": _double,
    "string": _string,
    "bytes": _bytes,
}


# -- unions, maps, arrays ----------------------------------------------------------------------


def _accepts(kind: str, value: Any) -> bool:
    """fastavro's validator of a primitive branch."""
    t = type(value)
    if kind == "null":
        return value is None
    if kind == "boolean":
        return t is bool
    if kind == "string":
        return t is str
    if kind == "bytes":
        return t is bytes
    if kind == "int":
        return t is int and _INT_MIN <= value <= _INT_MAX
    if kind in ("long", "timestamp-millis"):
        return t is int and _LONG_MIN <= value <= _LONG_MAX
    if kind in ("float", "double"):
        return t is int or t is float
    return False


def _union(branches: list[Any]) -> Writer | None:
    kinds = [_kind(b) for b in branches]
    if any(k is None for k in kinds):
        return None
    known: list[str] = [k for k in kinds if k is not None]
    if "timestamp-millis" in known:  # a datetime in a union: left to fastavro
        return None
    double = known.index("double") if "double" in known else None
    # The branch a value goes to depends on its type only, and for an int on its range: chosen
    # once per type (per range), as fastavro's validators would choose it.
    by_type: dict[type, Writer] = {}

    def choose(value: Any) -> Writer:
        for index, kind in enumerate(known):
            if _accepts(kind, value):
                if kind == "float" and double is not None:  # fastavro prefers a later double
                    index, kind = double, "double"
                tag, writer = varint(index), _PRIMITIVE_WRITERS[kind]
                if kind == "double":
                    return lambda v: tag + _DOUBLE(v)  # the type was checked: floats and ints
                if kind == "null":
                    return lambda v: tag
                return lambda v: tag + writer(v)
        raise Unsupported("no branch of the union")

    # ints: by range (an int, a long, neither), each chosen once
    int_writers: dict[int, Writer] = {}

    def write(value: Any) -> bytes:
        t = type(value)
        if t is int:
            size = 0 if _INT_MIN <= value <= _INT_MAX else 1 if _LONG_MIN <= value <= _LONG_MAX else 2
            hit = int_writers.get(size)
            if hit is None:
                hit = int_writers[size] = choose(value)
            return hit(value)
        hit = by_type.get(t)
        if hit is None:
            hit = choose(value)
            if t in (float, str, bool, bytes, type(None)):
                by_type[t] = hit
        return hit(value)

    return write


def _map(values: Writer) -> Writer:
    keys: dict[str, bytes] = {}  # a key's encoding, kept for the keys seen (feature names recur)

    def key(k: Any) -> bytes:
        if type(k) is not str:
            raise Unsupported("a key that is not a str")
        data = k.encode()
        encoded = varint(len(data)) + data
        if len(keys) < 10_000:
            keys[k] = encoded
        return encoded

    def write(value: Any) -> bytes:
        if type(value) is not dict:
            raise Unsupported("not a dict")
        if not value:
            return _ZERO
        get = keys.get
        parts = [varint(len(value))]
        for k, v in value.items():
            parts.append(get(k) or key(k))
            parts.append(values(v))
        parts.append(_ZERO)
        return b"".join(parts)

    return write


def _array(items: Writer) -> Writer:
    def write(value: Any) -> bytes:
        if type(value) is not list:
            raise Unsupported("not a list")
        if not value:
            return _ZERO
        return b"".join([varint(len(value)), *map(items, value), _ZERO])

    return write
