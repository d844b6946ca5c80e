"""The records the registry announces (what a rejection and a promotion say about the comparison), and
how it reads them back from its decision log."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from typing import Any

import fastavro

from driftline.catalog import MODELS_PROMOTED, MODELS_REJECTED, schemas_dir
from driftline.events import as_utc, envelope, epoch_ms
from driftline.outbox import record_to_json
from driftline.project import PromotionPolicy
from driftline.records import ModelTrained
from driftline_registry.handlers import promotion, rejection
from driftline_registry.policy import decide
from driftline_registry.store import RegisteredVersion, logged_record

POLICY = PromotionPolicy(metric="accuracy", margin=0.0, floor=0.7)
ARTIFACT: dict[str, Any] = {
    "model_name": "m",
    "run_id": "run-4",
    "artifact_bucket": "b",
    "artifact_key": "k",
    "artifact_sha256": "s",
    "metadata_key": "mk",
    "metadata_sha256": "ms",
    "feature_names": ("x",),
    "drift_episode_id": None,
}


def trained(metrics: dict[str, float]) -> ModelTrained:
    return ModelTrained(
        **envelope("training"),
        **ARTIFACT,
        metrics=metrics,
        dataset_fingerprint="f",
        holdout_fingerprint="h",
        feature_set_version="1",
        params={},
        n_train=10,
        n_holdout=5,
        duration_s=1.0,
        trigger="request",
    )


def _roundtrip(record_name: str, record: dict[str, Any]) -> dict[str, Any]:
    schema = fastavro.parse_schema(json.loads((schemas_dir() / f"{record_name}.avsc").read_text()))
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema, record)
    buf.seek(0)
    out: dict[str, Any] = fastavro.schemaless_reader(buf, schema, schema)
    return out


def test_a_rejection_for_a_missing_metric_says_so_instead_of_reporting_zero() -> None:
    decision = decide(POLICY, metrics={"f1": 0.9}, champion_version=None, evaluated_against=None, champion_metrics=None)
    record = rejection(trained({"f1": 0.9}), version=4, env=envelope("registry"), decision=decision)
    assert record.candidate_value is None and "no accuracy" in record.reason
    assert _roundtrip("ModelRejected", record.to_avro())["candidate_value"] is None


def test_a_policy_promotion_carries_its_comparison_and_a_manual_one_none() -> None:
    decision = decide(
        POLICY,
        metrics={"accuracy": 0.9},
        champion_version=3,
        evaluated_against=3,
        champion_metrics={"accuracy": 0.8},
        comparison_metrics={"accuracy": 0.85},
    )
    policy = promotion(
        trained({"accuracy": 0.9}),
        version=4,
        env=envelope("registry"),
        action="promote",
        previous_version=3,
        reason=decision.reason,
        actor="policy",
        decision=decision,
    )
    got = _roundtrip("ModelPromoted", policy.to_avro())
    assert (got["metric"], got["candidate_value"], got["champion_value"]) == ("accuracy", 0.85, 0.8)
    assert (got["version"], got["artifact_key"], got["feature_names"]) == (4, "k", ["x"])
    registered = RegisteredVersion(**ARTIFACT, version=4, metrics={"f1": 0.9})
    manual = promotion(
        registered, version=4, env=envelope("registry"), action="rollback", previous_version=5, reason="r", actor="me"
    )
    assert _roundtrip("ModelPromoted", manual.to_avro())["metric"] is None


def test_a_decision_read_back_from_the_log_table_is_the_record_that_was_stored() -> None:
    decision = decide(
        POLICY, metrics={"accuracy": 0.9}, champion_version=None, evaluated_against=None, champion_metrics=None
    )
    promoted = promotion(
        trained({"accuracy": 0.9}),
        version=4,
        env=envelope("registry"),
        action="promote",
        previous_version=None,
        reason=decision.reason,
        actor="policy",
        decision=decision,
    )
    rejected = rejection(trained({"f1": 0.9}), version=5, env=envelope("registry"), decision=decision)
    for topic, record in ((MODELS_PROMOTED, promoted), (MODELS_REJECTED, rejected)):
        back = logged_record(topic, record_to_json(record.to_avro()))
        # The log keeps times in milliseconds, as the topic does.
        millis = {k: as_utc(epoch_ms(getattr(record, k))) for k in ("event_time", "produced_at")}
        assert back == replace(record, **millis)


def test_a_registered_version_is_read_from_its_row() -> None:
    row = {**ARTIFACT, "version": 4, "metrics": {"f1": 0.9}, "stage": "champion", "params": {}}
    assert RegisteredVersion.of_row(row) == RegisteredVersion(**ARTIFACT, version=4, metrics={"f1": 0.9})
