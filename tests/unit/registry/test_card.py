"""A version's model card, from its row and its stage history."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from driftline_registry.card import model_card

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def row(**over: Any) -> dict[str, Any]:
    base = {
        "model_name": "m",
        "version": 3,
        "run_id": "run-3",
        "trained_event_id": "trained-3",
        "correlation_id": "drift-event-1",
        "trigger": "drift",
        "drift_episode_id": "ep-1",
        "training_request_id": "req-3",
        "artifact_bucket": "b",
        "dataset_fingerprint": "d" * 64,
        "holdout_fingerprint": "h" * 64,
        "evaluated_against": 2,
        "champion_metrics": {"accuracy": 0.6},
        "comparison_metrics": {"accuracy": 0.9},
        "n_comparison": 80,
        "metrics": {"accuracy": 0.88},
        "params": {"max_iter": "150"},
        "n_train": 300,
        "n_holdout": 100,
        "training_set_key": "models/m/run-3/training-set-x.parquet",
        "training_set_sha256": "x",
        "training_set_size": 999,
        "train_start": T0,
        "holdout_end": T0 + timedelta(hours=1),
        "labels_as_of": T0 + timedelta(hours=2),
        "code_version": "abc123",
    }
    return {**base, **over}


def hist(i: int, action: str, event_id: str, **details: Any) -> dict[str, Any]:
    return {
        "id": i,
        "event_id": event_id,
        "action": action,
        "at": T0 + timedelta(minutes=i),
        "actor": "policy",
        "reason": action,
        "previous_version": 2,
        "correlation_id": "drift-event-1",
        "details": details,
    }


def test_the_card_links_the_version_to_its_promotion_and_the_deployments_it_caused() -> None:
    history = [  # newest first, as the store returns it
        hist(5, "deployment", "dep-other", causation_id="someone-else", instance_id="d2", slot="champion"),
        hist(4, "deployment", "dep-1", causation_id="promo-3", instance_id="d1", slot="champion", status="loaded"),
        hist(3, "promote", "promo-3", metric="accuracy", candidate_value=0.9, champion_value=0.6, margin=0.0),
        hist(1, "registered", "trained-3", run_id="run-3"),
    ]
    card = model_card(row(), history)
    lineage = card["lineage"]
    assert (lineage["drift_episode_id"], lineage["training_request_id"], lineage["run_id"]) == (
        "ep-1",
        "req-3",
        "run-3",
    )
    assert lineage["promotion"]["event_id"] == "promo-3" and lineage["rejection"] is None
    assert [d["event_id"] for d in lineage["deployments"]] == ["dep-1"]
    assert lineage["deployments"][0]["status"] == "loaded"
    assert card["training_set"]["rows"] == 400 and card["training_set"]["start"] == T0
    assert card["code_version"] == "abc123"
    assert card["comparison"]["decision"] == {
        "action": "promote",
        "metric": "accuracy",
        "candidate_value": 0.9,
        "champion_value": 0.6,
        "margin": 0.0,
    }


def test_a_rejected_version_and_one_trained_before_training_sets() -> None:
    card = model_card(
        row(training_set_key=None), [hist(2, "reject", "rej-3", metric="accuracy"), hist(1, "registered", "t")]
    )
    assert card["training_set"] is None
    assert card["lineage"]["promotion"] is None and card["lineage"]["deployments"] == []
    assert card["lineage"]["rejection"]["event_id"] == "rej-3"
    assert card["comparison"]["decision"]["action"] == "reject"
