"""The records the registry announces: what a rejection and a promotion say about the comparison."""

from __future__ import annotations

import io
import json
from typing import Any

import fastavro

from driftline.catalog import schemas_dir
from driftline.events import envelope
from driftline.project import PromotionPolicy
from driftline_registry.handlers import promoted_record, rejected_record
from driftline_registry.policy import decide

POLICY = PromotionPolicy(metric="accuracy", margin=0.0, floor=0.7)
VERSION: dict[str, Any] = {
    "model_name": "m",
    "version": 4,
    "run_id": "run-4",
    "artifact_bucket": "b",
    "artifact_key": "k",
    "artifact_sha256": "s",
    "metadata_key": "mk",
    "metadata_sha256": "ms",
    "feature_names": ["x"],
    "metrics": {"f1": 0.9},
    "drift_episode_id": None,
}


def _roundtrip(record_name: str, record: dict[str, Any]) -> dict[str, Any]:
    schema = fastavro.parse_schema(json.loads((schemas_dir() / f"{record_name}.avsc").read_text()))
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema, record)
    buf.seek(0)
    out: dict[str, Any] = fastavro.schemaless_reader(buf, schema, schema)
    return out


def test_a_rejection_for_a_missing_metric_says_so_instead_of_reporting_zero() -> None:
    decision = decide(POLICY, metrics={"f1": 0.9}, champion_version=None, evaluated_against=None, champion_metrics=None)
    record = rejected_record(VERSION, envelope_fields=envelope("registry"), decision=decision)
    assert record["candidate_value"] is None and "no accuracy" in record["reason"]
    assert _roundtrip("ModelRejected", record)["candidate_value"] is None


def test_a_policy_promotion_carries_its_comparison_and_a_manual_one_none() -> None:
    decision = decide(
        POLICY,
        metrics={"accuracy": 0.9},
        champion_version=3,
        evaluated_against=3,
        champion_metrics={"accuracy": 0.8},
        comparison_metrics={"accuracy": 0.85},
    )
    policy = promoted_record(
        {**VERSION, "metrics": {"accuracy": 0.9}},
        envelope_fields=envelope("registry"),
        action="promote",
        previous_version=3,
        reason=decision.reason,
        actor="policy",
        decision=decision,
    )
    got = _roundtrip("ModelPromoted", policy)
    assert (got["metric"], got["candidate_value"], got["champion_value"]) == ("accuracy", 0.85, 0.8)
    manual = promoted_record(
        VERSION, envelope_fields=envelope("registry"), action="rollback", previous_version=5, reason="r", actor="me"
    )
    assert _roundtrip("ModelPromoted", manual)["metric"] is None
