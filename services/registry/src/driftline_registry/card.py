"""A version's model card: what it was trained on, how it was judged, where it came from and
went. Pure: built from the version's row and its stage history, as the store returns them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# The history actions that put a version in a deployment slot (models.promoted records).
PROMOTIONS = ("promote", "rollback", "shadow")


def _entry(h: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "event_id": h["event_id"],
        "action": h["action"],
        "at": h["at"],
        "actor": h["actor"],
        "reason": h["reason"],
        "previous_version": h["previous_version"],
        "correlation_id": h["correlation_id"],
    }


def lineage(row: Mapping[str, Any], history: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Drift episode → training request → run → version → promotion → deployment.

    ``history``: the version's stage history, any order. The promotion is the first event that
    put the version in a slot (``promotions``: every one, rollbacks to it included); the
    deployments are what deployment reported for those events.
    """
    ordered = sorted(history, key=lambda h: (h["at"], h["id"]))
    promotions = [h for h in ordered if h["action"] in PROMOTIONS]
    promotion = promotions[0] if promotions else None
    promotion_ids = {h["event_id"] for h in promotions}
    rejection = next((h for h in ordered if h["action"] == "reject"), None)
    deployments = [
        {
            "event_id": h["event_id"],
            "at": h["at"],
            "instance_id": h["details"].get("instance_id"),
            "slot": h["details"].get("slot"),
            "status": h["details"].get("status"),
        }
        for h in ordered
        if h["action"] == "deployment" and h["details"].get("causation_id") in promotion_ids
    ]
    return {
        "correlation_id": row["correlation_id"],
        "trigger": row["trigger"],
        "drift_episode_id": row["drift_episode_id"],
        "training_request_id": row["training_request_id"],
        "run_id": row["run_id"],
        "trained_event_id": row["trained_event_id"],
        "version": row["version"],
        "promotion": None if promotion is None else _entry(promotion),
        "promotions": [_entry(h) for h in promotions],
        "rejection": None if rejection is None else _entry(rejection),
        "deployments": deployments,
        # Kept from the version's earlier lineage document.
        "dataset_fingerprint": row["dataset_fingerprint"],
        "holdout_fingerprint": row["holdout_fingerprint"],
        "evaluated_against": row["evaluated_against"],
    }


def training_set(row: Mapping[str, Any]) -> dict[str, Any] | None:
    """The training-set artifact and what it holds; None for a version trained before runs
    recorded one."""
    if row.get("training_set_key") is None:
        return None
    return {
        "bucket": row["artifact_bucket"],
        "key": row["training_set_key"],
        "sha256": row["training_set_sha256"],
        "size": row["training_set_size"],
        "rows": row["n_train"] + row["n_holdout"],
        "n_train": row["n_train"],
        "n_holdout": row["n_holdout"],
        "start": row["train_start"],
        "end": row["holdout_end"],
        "labels_as_of": row["labels_as_of"],
    }


def comparison(row: Mapping[str, Any], history: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The champion comparison the version was judged on, and the decision made on it."""
    decided = next(
        (h for h in sorted(history, key=lambda h: (h["at"], h["id"])) if h["details"].get("metric") is not None),
        None,
    )
    return {
        "champion_version": row["evaluated_against"],
        "champion_metrics": row["champion_metrics"],
        "candidate_metrics": row["comparison_metrics"],
        "n_comparison": row["n_comparison"],
        "decision": None if decided is None else {"action": decided["action"], **decided["details"]},
    }


def model_card(row: Mapping[str, Any], history: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    return {
        "training_set": training_set(row),
        "params": row["params"],
        "code_version": row.get("code_version"),
        "holdout_metrics": row["metrics"],
        "comparison": comparison(row, history),
        "lineage": lineage(row, history),
    }
