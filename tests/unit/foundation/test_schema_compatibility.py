"""A schema change must stay BACKWARD compatible with the schema's previous version.

The previous version comes from git: the committed version when the working tree changed the
file, otherwise the version before the last commit that changed it. Compatibility is checked
twice: by Apache Avro's reader/writer compatibility checker (every rule of schema resolution,
deterministically), and the way a consumer experiences it: records written with the old schema
must decode with the new one under fastavro, the library the services read with. The registry
applies the same rule when `driftline stack init` registers a schema
(tests/integration/test_stack_components.py).
"""

from __future__ import annotations

import copy
import io
import json
import subprocess
from pathlib import Path
from typing import Any

import avro.schema
import fastavro
import pytest
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType
from fastavro.utils import generate_many

from driftline.catalog import schemas_dir
from driftline.settings import repo_root

ROOT = repo_root()
SCHEMA_FILES = sorted(schemas_dir().glob("*.avsc")) + sorted((schemas_dir() / "events").glob("*.avsc"))


def _git(*args: str) -> str:
    assert ROOT is not None
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False).stdout


def previous_version(path: Path) -> dict[str, Any] | None:
    """The schema this file's current content must stay compatible with, or None if it is new."""
    assert ROOT is not None
    rel = path.relative_to(ROOT).as_posix()
    current = json.loads(path.read_text())
    for rev in _git("log", "--format=%H", "--", rel).split():
        text = _git("show", f"{rev}:{rel}")
        if text and json.loads(text) != current:
            return dict(json.loads(text))
    return None


def incompatibility(old: dict[str, Any], new: dict[str, Any], samples: int = 60) -> str | None:
    """Why data written with ``old`` cannot be read with ``new`` (None when it can)."""
    result = ReaderWriterCompatibilityChecker().get_compatibility(
        reader=avro.schema.parse(json.dumps(new)), writer=avro.schema.parse(json.dumps(old))
    )
    if result.compatibility is not SchemaCompatibilityType.compatible:
        return f"{sorted(map(str, result.incompatibilities))} at {sorted(result.locations)}: {sorted(result.messages)}"
    writer = fastavro.parse_schema(old)
    reader = fastavro.parse_schema(new)
    for record in generate_many(writer, samples):
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, writer, record)
        buf.seek(0)
        try:
            fastavro.schemaless_reader(buf, writer, reader)
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
    return None


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=lambda p: p.stem)
def test_schema_is_backward_compatible_with_its_previous_version(path: Path) -> None:
    old = previous_version(path)
    if old is None:
        if _git("rev-parse", "--is-shallow-repository").strip() == "true":
            pytest.skip(f"{path.name}: this clone is shallow, so the schema's previous version is unknown")
        pytest.skip(f"{path.name} is new: no previous version to stay compatible with")
    problem = incompatibility(old, json.loads(path.read_text()))
    assert problem is None, f"{path.name} breaks BACKWARD compatibility: {problem}"


def test_the_check_catches_a_new_field_without_default() -> None:
    old = json.loads((schemas_dir() / "LabelRecorded.avsc").read_text())
    new = copy.deepcopy(old)
    new["fields"].append({"name": "confidence", "type": "double"})
    assert incompatibility(old, new) is not None


def test_the_check_catches_a_type_change() -> None:
    old = json.loads((schemas_dir() / "PredictionMade.avsc").read_text())
    new = copy.deepcopy(old)
    next(f for f in new["fields"] if f["name"] == "model_version")["type"] = "string"
    assert incompatibility(old, new) is not None


def test_the_check_accepts_a_new_field_with_default_and_a_removed_field() -> None:
    old = json.loads((schemas_dir() / "LabelRecorded.avsc").read_text())
    new = copy.deepcopy(old)
    new["fields"].append({"name": "confidence", "type": ["null", "double"], "default": None})
    new["fields"] = [f for f in new["fields"] if f["name"] != "source"]
    assert incompatibility(old, new) is None


def test_the_check_catches_a_removed_enum_symbol() -> None:
    old = {
        "type": "record",
        "name": "R",
        "fields": [{"name": "s", "type": {"type": "enum", "name": "S", "symbols": [f"S{i}" for i in range(40)]}}],
    }
    new = copy.deepcopy(old)
    new["fields"][0]["type"]["symbols"] = new["fields"][0]["type"]["symbols"][:-1]
    assert incompatibility(old, new) is not None
