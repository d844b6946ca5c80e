"""The topic catalog (schemas/topics.yaml) and the Avro schemas (schemas/*.avsc).

``schemas/`` is the source of truth. It is found in the checkout, or wherever
``DRIFTLINE_SCHEMAS_DIR`` points (container images copy it there).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import fastavro
import yaml

from driftline.settings import repo_root

# Topic names, for code that refers to one; tests check they match the catalog.
EVENTS_RAW = "events.raw"
LABELS = "labels"
EVENTS_DLQ = "events.dlq"
FEATURES_VECTORS = "features.vectors"
PREDICTIONS = "predictions"
DRIFT_DETECTED = "drift.detected"
TRAINING_REQUESTED = "training.requested"
MODELS_TRAINED = "models.trained"
TRAINING_FAILED = "training.failed"
MODELS_PROMOTED = "models.promoted"
MODELS_REJECTED = "models.rejected"
DEPLOYMENTS_STATUS = "deployments.status"
MODELS_COMPARED = "models.compared"
PROJECTS = "projects"

ENVELOPE_FIELDS = ("event_id", "event_time", "produced_at", "producer", "correlation_id", "causation_id")


def schemas_dir() -> Path:
    env = os.environ.get("DRIFTLINE_SCHEMAS_DIR")
    if env:
        return Path(env)
    root = repo_root()
    if root is None:
        raise RuntimeError("schemas/ not found: set DRIFTLINE_SCHEMAS_DIR")
    schemas: Path = root / "schemas"
    return schemas


@dataclass(frozen=True)
class Topic:
    name: str
    record: str
    key: str
    owner: str
    partitions: int
    replication_factor: int
    retention_ms: int
    config: dict[str, str] = field(default_factory=dict)

    def subject(self, prefix: str = "") -> str:
        """Schema-registry subject of the physical topic (Confluent TopicNameStrategy)."""
        return f"{prefix}{self.name}-value"

    def kafka_config(self) -> dict[str, str]:
        return {"retention.ms": str(self.retention_ms), "cleanup.policy": "delete", **self.config}


@cache
def load_schema_json(record: str, directory: Path | None = None) -> dict[str, Any]:
    """The schema file of a record type, as JSON."""
    base = directory or schemas_dir()
    path = base / f"{record}.avsc"
    if not path.is_file():
        path = base / "events" / f"{record}.avsc"
    with path.open() as f:
        data: dict[str, Any] = json.load(f)
    return data


@cache
def parsed_schema(record: str) -> Any:
    """fastavro's parsed form, parsed once per process."""
    return fastavro.parse_schema(load_schema_json(record))


def canonical_schema_str(record: str) -> str:
    """The schema as the compact JSON text that is registered."""
    return json.dumps(load_schema_json(record), separators=(",", ":"), sort_keys=False)


class Catalog:
    def __init__(self, topics: list[Topic]) -> None:
        self._by_name = {t.name: t for t in topics}

    @classmethod
    def load(cls, path: Path | None = None) -> Catalog:
        path = path or schemas_dir() / "topics.yaml"
        with path.open() as f:
            doc = yaml.safe_load(f)
        defaults = doc.get("defaults", {})
        topics = [
            Topic(
                name=t["name"],
                record=t["record"],
                key=t["key"],
                owner=t.get("owner", "any"),
                partitions=int(t.get("partitions", defaults.get("partitions", 1))),
                replication_factor=int(t.get("replication_factor", defaults.get("replication_factor", 1))),
                retention_ms=int(t.get("retention_ms", defaults.get("retention_ms", 604800000))),
                config={k: str(v) for k, v in t.get("config", {}).items()},
            )
            for t in doc["topics"]
        ]
        return cls(topics)

    def __getitem__(self, name: str) -> Topic:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"topic {name!r} is not in the catalog (schemas/topics.yaml)") from None

    def get(self, name: str) -> Topic | None:
        return self._by_name.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Any:
        return iter(self._by_name.values())

    def names(self) -> list[str]:
        return list(self._by_name)


@cache
def default_catalog() -> Catalog:
    return Catalog.load()
