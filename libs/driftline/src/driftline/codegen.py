"""Generates ``driftline/records.py``: one frozen dataclass per record type in ``schemas/*.avsc``.

``python -m driftline.codegen`` rewrites the module; ``--check`` exits 1 when it is stale (a unit
test runs the same comparison). Why a generator of our own rather than a library: the schemas use
a small subset of Avro (primitives, timestamp-millis, nullable unions, maps, arrays, one nested
record), the classes must be plain stdlib dataclasses that mypy checks, and the conversion to and
from fastavro's dicts must be explicit per field so the hot path (features.vectors) does no
reflection. The libraries that do this (dataclasses-avroschema, avro-to-python) generate schemas
from classes, or generate classes with their own run-time base types.

Mapping: string → str, boolean → bool, int/long → int, float/double → float, bytes → bytes,
timestamp-millis → datetime, ["null", T] → T | None, other unions → A | B, map → dict[str, V],
array → tuple[V, ...], record → a dataclass of its own. Fields with a default get it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from driftline.catalog import schemas_dir

_PRIMITIVES = {
    "string": "str",
    "boolean": "bool",
    "int": "int",
    "long": "int",
    "float": "float",
    "double": "float",
    "bytes": "bytes",
    "null": "None",
}

# How a field's value converts, by its shape: from fastavro's dict ({src} is d["field"]) and back
# ({src} is self.field); {cls} is the nested record class.
_FROM_AVRO = {
    "value": "{src}",
    "array": "tuple({src})",
    "records": "tuple({cls}.from_avro(x) for x in {src})",
    "optional record": "None if {src} is None else {cls}.from_avro({src})",
    "record": "{cls}.from_avro({src})",
}
_TO_AVRO = {
    "value": "{src}",
    "array": "list({src})",
    "records": "[x.to_avro() for x in {src}]",
    "optional record": "None if {src} is None else {src}.to_avro()",
    "record": "{src}.to_avro()",
}

HEADER = '''"""Typed records, one per Avro record type in ``schemas/`` — GENERATED, do not edit.

Regenerate with ``python -m driftline.codegen`` after changing a schema; a unit test fails when
this file is stale. ``to_avro()`` gives the dict fastavro writes; ``from_avro()`` builds a record
from the dict fastavro reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

'''


class _Gen:
    def __init__(self) -> None:
        self.classes: list[str] = []
        self.seen: set[str] = set()
        self.top: list[str] = []

    def py_type(self, t: Any) -> str:
        if isinstance(t, str):
            if t in _PRIMITIVES:
                return _PRIMITIVES[t]
            return t  # a named record defined earlier
        if isinstance(t, list):
            parts = [self.py_type(x) for x in t if x != "null"]
            text = " | ".join(parts)
            return f"{text} | None" if "null" in t else text
        kind = t["type"]
        if kind == "record":
            self.record(t, top=False)
            return str(t["name"])
        if kind == "array":
            return f"tuple[{self.py_type(t['items'])}, ...]"
        if kind == "map":
            return f"dict[str, {self.py_type(t['values'])}]"
        if t.get("logicalType") == "timestamp-millis":
            return "datetime"
        return _PRIMITIVES[kind]

    def _named(self, t: Any) -> dict[str, Any] | None:
        """The record schema inside a field type (itself, an array's items, a union's branch)."""
        if isinstance(t, dict):
            if t["type"] == "record":
                return t
            if t["type"] == "array":
                return self._named(t["items"])
        if isinstance(t, list):
            for x in t:
                found = self._named(x)
                if found is not None:
                    return found
        return None

    def _shape(self, t: Any) -> tuple[str, str]:
        """How a field converts: its shape (a key of ``_FROM_AVRO``/``_TO_AVRO``) and nested record class."""
        nested = self._named(t)
        array = isinstance(t, dict) and t["type"] == "array"
        if nested is None:
            return ("array" if array else "value"), ""
        if array:
            return "records", str(nested["name"])
        return ("optional record" if isinstance(t, list) else "record"), str(nested["name"])

    def _from_expr(self, name: str, t: Any) -> str:
        shape, cls = self._shape(t)
        return _FROM_AVRO[shape].format(src=f'd["{name}"]', cls=cls)

    def _to_expr(self, name: str, t: Any) -> str:
        shape, _ = self._shape(t)
        return _TO_AVRO[shape].format(src=f"self.{name}")

    def record(self, schema: dict[str, Any], *, top: bool) -> None:
        name = schema["name"]
        if name in self.seen:
            return
        self.seen.add(name)
        lines: list[str] = []
        fields = schema["fields"]
        annotations = [(f, self.py_type(f["type"])) for f in fields]  # nested classes are emitted first
        doc = str(schema.get("doc", f"The {name} record.")).replace('"""', "'")
        lines.append("@dataclass(frozen=True, slots=True, kw_only=True)")
        lines.append(f"class {name}:")
        lines.append(f'    """{doc}"""')
        lines.append("")
        lines.append(f'    RECORD: ClassVar[str] = "{name}"')
        for f, ann in annotations:
            line = f"    {f['name']}: {ann}"
            if "default" in f:
                default = f["default"]
                if isinstance(default, dict):
                    line += " = field(default_factory=dict)"
                elif isinstance(default, list):
                    line += " = ()"
                else:
                    line += f" = {default!r}"
            lines.append(line)
        lines.append("")
        lines.append("    @classmethod")
        lines.append(f"    def from_avro(cls, d: Mapping[str, Any]) -> {name}:")
        lines.append("        return cls(")
        for f in fields:
            fname = f["name"]
            if "default" in f:
                # fastavro fills defaults when it resolves to the local schema; a dict made by
                # hand (tests, tools) may leave them out.
                expr = f'd.get("{fname}", {self._default_src(f["default"])})'
                if self._named(f["type"]) is not None or isinstance(f["type"], dict):
                    expr = self._from_expr(fname, f["type"]).replace(f'd["{fname}"]', expr)
            else:
                expr = self._from_expr(fname, f["type"])
            lines.append(f"            {fname}={expr},")
        lines.append("        )")
        lines.append("")
        lines.append("    def to_avro(self) -> dict[str, Any]:")
        lines.append("        return {")
        for f in fields:
            lines.append(f'            "{f["name"]}": {self._to_expr(f["name"], f["type"])},')
        lines.append("        }")
        self.classes.append("\n".join(lines))
        if top:
            self.top.append(name)

    @staticmethod
    def _default_src(default: Any) -> str:
        if isinstance(default, dict):
            return "{}"
        if isinstance(default, list):
            return "()"
        return repr(default)


def generate(directory: Path | None = None) -> str:
    base = directory or schemas_dir()
    gen = _Gen()
    for path in sorted(base.glob("*.avsc")):
        gen.record(json.loads(path.read_text()), top=True)
    body = "\n\n\n".join(gen.classes)
    union = " | ".join(gen.top)
    registry = ",\n".join(f'    "{n}": {n}' for n in gen.top)
    return (
        HEADER
        + "\n"
        + body
        + "\n\n\n"
        + f"Record = {union}\n"
        + '"""Any top-level record type (the value of a topic)."""\n\n'
        + f"RECORD_TYPES: dict[str, type[Record]] = {{\n{registry},\n}}\n"
    )


def target() -> Path:
    return Path(__file__).with_name("records.py")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    text = generate()
    path = target()
    if "--check" in args:
        if not path.is_file() or path.read_text() != text:
            print(f"{path} is stale: run python -m driftline.codegen", file=sys.stderr)
            return 1
        return 0
    path.write_text(text)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
