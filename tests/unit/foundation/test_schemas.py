"""The schemas in schemas/ and the topic catalog: parse, carry the envelope, agree with each other."""

from __future__ import annotations

import json

import fastavro
import pytest

from driftline import catalog as cat
from driftline.catalog import ENVELOPE_FIELDS, Catalog, default_catalog, load_schema_json, schemas_dir

TOPIC_RECORDS = sorted(p.stem for p in schemas_dir().glob("*.avsc"))
PAYLOAD_RECORDS = sorted(p.stem for p in (schemas_dir() / "events").glob("*.avsc"))


@pytest.mark.parametrize("record", TOPIC_RECORDS + PAYLOAD_RECORDS)
def test_every_schema_file_parses_and_is_named_after_its_record(record: str) -> None:
    schema = load_schema_json(record)
    fastavro.parse_schema(schema)
    assert schema["type"] == "record"
    assert schema["name"] == record


@pytest.mark.parametrize("record", TOPIC_RECORDS)
def test_every_topic_record_starts_with_the_same_envelope(record: str) -> None:
    fields = load_schema_json(record)["fields"]
    assert tuple(f["name"] for f in fields[: len(ENVELOPE_FIELDS)]) == ENVELOPE_FIELDS
    reference = load_schema_json("RawEvent")["fields"][: len(ENVELOPE_FIELDS)]
    assert fields[: len(ENVELOPE_FIELDS)] == reference


def test_catalog_covers_every_topic_record_once_and_keys_exist() -> None:
    catalog = default_catalog()
    assert sorted(t.record for t in catalog) == TOPIC_RECORDS
    for topic in catalog:
        field_names = [f["name"] for f in load_schema_json(topic.record)["fields"]]
        assert topic.key in field_names, f"{topic.name}: key {topic.key} is not a field of {topic.record}"
        assert topic.partitions >= 1
        assert topic.retention_ms == -1 or topic.retention_ms > 0


def test_topic_constants_match_the_catalog() -> None:
    names = {v for k, v in vars(cat).items() if k.isupper() and isinstance(v, str) and k != "ENVELOPE_FIELDS"}
    assert names == set(default_catalog().names())


def test_unknown_topic_is_reported_by_name(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "topics.yaml").write_text("topics:\n  - {name: a, record: RawEvent, key: entity_id}\n")
    c = Catalog.load(tmp_path / "topics.yaml")
    with pytest.raises(KeyError, match="'nope' is not in the catalog"):
        c["nope"]


def test_registered_text_is_compact_json_of_the_file() -> None:
    text = cat.canonical_schema_str("ModelTrained")
    assert json.loads(text) == load_schema_json("ModelTrained")
    assert "\n" not in text
