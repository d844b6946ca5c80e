"""Typed records, one per Avro record type in ``schemas/`` — GENERATED, do not edit.

Regenerate with ``python -m driftline.codegen`` after changing a schema; a unit test fails when
this file is stale. ``to_avro()`` gives the dict fastavro writes; ``from_avro()`` builds a record
from the dict fastavro reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar


@dataclass(frozen=True, slots=True, kw_only=True)
class ChallengerCompared:
    """Monitoring's verdict on a challenger (topic models.compared). In shadow: from the champion's and the challenger's predictions of the same labelled events (paired counts, McNemar). For a canary: from the labelled events each served (two independent samples, the canary's entities and the champion's). The registry promotes the challenger on a challenger_better verdict and, for a canary, withdraws it on champion_better or on a no_difference verdict reached at the policy's most labels."""

    RECORD: ClassVar[str] = "ChallengerCompared"
    event_id: str
    event_time: datetime
    produced_at: datetime
    producer: str
    correlation_id: str
    causation_id: str | None = None
    model_name: str
    champion_version: int
    challenger_version: int
    verdict: str
    labelled_pairs: int
    both_right: int
    champion_only_right: int
    challenger_only_right: int
    both_wrong: int
    champion_accuracy: float
    challenger_accuracy: float
    difference: float
    interval_low: float
    interval_high: float
    confidence: float
    p_value: float
    mode: str = 'shadow'
    champion_labelled: int | None = None
    champion_right: int | None = None
    challenger_labelled: int | None = None
    challenger_right: int | None = None
    traffic_fraction: float | None = None

    @classmethod
    def from_avro(cls, d: Mapping[str, Any]) -> ChallengerCompared:
        return cls(
            event_id=d["event_id"],
            event_time=d["event_time"],
            produced_at=d["produced_at"],
            producer=d["producer"],
            correlation_id=d["correlation_id"],
            causation_id=d.get("causation_id", None),
            model_name=d["model_name"],
            champion_version=d["champion_version"],
            challenger_version=d["challenger_version"],
            verdict=d["verdict"],
            labelled_pairs=d["labelled_pairs"],
            both_right=d["both_right"],
            champion_only_right=d["champion_only_right"],
            challenger_only_right=d["challenger_only_right"],
            both_wrong=d["both_wrong"],
            champion_accuracy=d["champion_accuracy"],
            challenger_accuracy=d["challenger_accuracy"],
            difference=d["difference"],
            interval_low=d["interval_low"],
            interval_high=d["interval_high"],
            confidence=d["confidence"],
            p_value=d["p_value"],
            mode=d.get("mode", 'shadow'),
            champion_labelled=d.get("champion_labelled", None),
            champion_right=d.get("champion_right", None),
            challenger_labelled=d.get("challenger_labelled", None),
            challenger_right=d.get("challenger_right", None),
            traffic_fraction=d.get("traffic_fraction", None),
        )

    def to_avro(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "event_time": self.event_time,
            "produced_at": self.produced_at,
            "producer": self.producer,
            "correlation_id": self.correlation_id,
            "causation_id": self.causation_id,
            "model_name": self.model_name,
            "champion_version": self.champion_version,
            "challenger_version": self.challenger_version,
            "verdict": self.verdict,
            "labelled_pairs": self.labelled_pairs,
            "both_right": self.both_right,
            "champion_only_right": self.champion_only_right,
            "challenger_only_right": self.challenger_only_right,
            "both_wrong": self.both_wrong,
            "champion_accuracy": self.champion_accuracy,
            "challenger_accuracy": self.challenger_accuracy,
            "difference": self.difference,
            "interval_low": self.interval_low,
            "interval_high": self.interval_high,
            "confidence": self.confidence,
            "p_value": self.p_value,
            "mode": self.mode,
            "champion_labelled": self.champion_labelled,
            "champion_right": self.champion_right,
            "challenger_labelled": self.challenger_labelled,
            "challenger_right": self.challenger_right,
            "traffic_fraction": self.traffic_fraction,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadLetter:
    """A record that was refused, with the reason and its original bytes (topic events.dlq)."""

    RECORD: ClassVar[str] = "DeadLetter"
    event_id: str
    event_time: datetime
    produced_at: datetime
    producer: str
    correlation_id: str
    causation_id: str | None = None
    source: str
    reason: str
    error_type: str
    original: bytes
    original_topic: str | None = None
    original_partition: int | None = None
    original_offset: int | None = None
    original_key: bytes | None = None
    attempts: int = 1

    @classmethod
    def from_avro(cls, d: Mapping[str, Any]) -> DeadLetter:
        return cls(
            event_id=d["event_id"],
            event_time=d["event_time"],
            produced_at=d["produced_at"],
            producer=d["producer"],
            correlation_id=d["correlation_id"],
            causation_id=d.get("causation_id", None),
            source=d["source"],
            reason=d["reason"],
            error_type=d["error_type"],
            original=d["original"],
            original_topic=d.get("original_topic", None),
            original_partition=d.get("original_partition", None),
            original_offset=d.get("original_offset", None),
            original_key=d.get("original_key", None),
            attempts=d.get("attempts", 1),
        )

    def to_avro(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "event_time": self.event_time,
            "produced_at": self.produced_at,
            "producer": self.producer,
            "correlation_id": self.correlation_id,
            "causation_id": self.causation_id,
            "source": self.source,
            "reason": self.reason,
            "error_type": self.error_type,
            "original": self.original,
            "original_topic": self.original_topic,
            "original_partition": self.original_partition,
            "original_offset": self.original_offset,
            "original_key": self.original_key,
            "attempts": self.attempts,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class DeploymentStatusChanged:
    """What a deployment instance did with a promotion (topic deployments.status)."""

    RECORD: ClassVar[str] = "DeploymentStatusChanged"
    event_id: str
    event_time: datetime
    produced_at: datetime
    producer: str
    correlation_id: str
    causation_id: str | None = None
    model_name: str
    version: int
    slot: str
    status: str
    reason: str
    instance_id: str
    load_seconds: float | None = None

    @classmethod
    def from_avro(cls, d: Mapping[str, Any]) -> DeploymentStatusChanged:
        return cls(
            event_id=d["event_id"],
            event_time=d["event_time"],
            produced_at=d["produced_at"],
            producer=d["producer"],
            correlation_id=d["correlation_id"],
            causation_id=d.get("causation_id", None),
            model_name=d["model_name"],
            version=d["version"],
            slot=d["slot"],
            status=d["status"],
            reason=d["reason"],
            instance_id=d["instance_id"],
            load_seconds=d.get("load_seconds", None),
        )

    def to_avro(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "event_time": self.event_time,
            "produced_at": self.produced_at,
            "producer": self.producer,
            "correlation_id": self.correlation_id,
            "causation_id": self.causation_id,
            "model_name": self.model_name,
            "version": self.version,
            "slot": self.slot,
            "status": self.status,
            "reason": self.reason,
            "instance_id": self.instance_id,
            "load_seconds": self.load_seconds,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class DriftEvidence:
    """The DriftEvidence record."""

    RECORD: ClassVar[str] = "DriftEvidence"
    feature: str | None = None
    method: str
    statistic: float
    threshold: float
    p_value: float | None = None
    drifted: bool

    @classmethod
    def from_avro(cls, d: Mapping[str, Any]) -> DriftEvidence:
        return cls(
            feature=d.get("feature", None),
            method=d["method"],
            statistic=d["statistic"],
            threshold=d["threshold"],
            p_value=d.get("p_value", None),
            drifted=d["drifted"],
        )

    def to_avro(self) -> dict[str, Any]:
        return {
            "feature": self.feature,
            "method": self.method,
            "statistic": self.statistic,
            "threshold": self.threshold,
            "p_value": self.p_value,
            "drifted": self.drifted,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class DriftDetected:
    """Monitoring found drift; training retrains on it (topic drift.detected)."""

    RECORD: ClassVar[str] = "DriftDetected"
    event_id: str
    event_time: datetime
    produced_at: datetime
    producer: str
    correlation_id: str
    causation_id: str | None = None
    episode_id: str
    kind: str
    method: str
    statistic: float
    threshold: float
    window_start: datetime
    window_end: datetime
    window_size: int
    features: tuple[str, ...]
    model_name: str
    model_version: int
    evidence: tuple[DriftEvidence, ...]
    onset: datetime | None = None
    attempt: int = 1
    reason: str = 'detected'
    labelled_since_onset: int | None = None

    @classmethod
    def from_avro(cls, d: Mapping[str, Any]) -> DriftDetected:
        return cls(
            event_id=d["event_id"],
            event_time=d["event_time"],
            produced_at=d["produced_at"],
            producer=d["producer"],
            correlation_id=d["correlation_id"],
            causation_id=d.get("causation_id", None),
            episode_id=d["episode_id"],
            kind=d["kind"],
            method=d["method"],
            statistic=d["statistic"],
            threshold=d["threshold"],
            window_start=d["window_start"],
            window_end=d["window_end"],
            window_size=d["window_size"],
            features=tuple(d["features"]),
            model_name=d["model_name"],
            model_version=d["model_version"],
            evidence=tuple(DriftEvidence.from_avro(x) for x in d["evidence"]),
            onset=d.get("onset", None),
            attempt=d.get("attempt", 1),
            reason=d.get("reason", 'detected'),
            labelled_since_onset=d.get("labelled_since_onset", None),
        )

    def to_avro(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "event_time": self.event_time,
            "produced_at": self.produced_at,
            "producer": self.producer,
            "correlation_id": self.correlation_id,
            "causation_id": self.causation_id,
            "episode_id": self.episode_id,
            "kind": self.kind,
            "method": self.method,
            "statistic": self.statistic,
            "threshold": self.threshold,
            "window_start": self.window_start,
            "window_end": self.window_end,
            "window_size": self.window_size,
            "features": list(self.features),
            "model_name": self.model_name,
            "model_version": self.model_version,
            "evidence": [x.to_avro() for x in self.evidence],
            "onset": self.onset,
            "attempt": self.attempt,
            "reason": self.reason,
            "labelled_since_onset": self.labelled_since_onset,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class FeatureVectorComputed:
    """Feature values of one event at its event time (topic features.vectors)."""

    RECORD: ClassVar[str] = "FeatureVectorComputed"
    event_id: str
    event_time: datetime
    produced_at: datetime
    producer: str
    correlation_id: str
    causation_id: str | None = None
    source_event_id: str
    entity_id: str
    feature_set_version: str
    features: dict[str, float | str | None]
    late: bool = False
    project: str | None = None

    @classmethod
    def from_avro(cls, d: Mapping[str, Any]) -> FeatureVectorComputed:
        return cls(
            event_id=d["event_id"],
            event_time=d["event_time"],
            produced_at=d["produced_at"],
            producer=d["producer"],
            correlation_id=d["correlation_id"],
            causation_id=d.get("causation_id", None),
            source_event_id=d["source_event_id"],
            entity_id=d["entity_id"],
            feature_set_version=d["feature_set_version"],
            features=d["features"],
            late=d.get("late", False),
            project=d.get("project", None),
        )

    def to_avro(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "event_time": self.event_time,
            "produced_at": self.produced_at,
            "producer": self.producer,
            "correlation_id": self.correlation_id,
            "causation_id": self.causation_id,
            "source_event_id": self.source_event_id,
            "entity_id": self.entity_id,
            "feature_set_version": self.feature_set_version,
            "features": self.features,
            "late": self.late,
            "project": self.project,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class LabelRecorded:
    """Ground truth for an earlier event (topic labels)."""

    RECORD: ClassVar[str] = "LabelRecorded"
    event_id: str
    event_time: datetime
    produced_at: datetime
    producer: str
    correlation_id: str
    causation_id: str | None = None
    labelled_event_id: str
    entity_id: str
    label: str | int | float | bool
    source: str = 'http'
    project: str | None = None

    @classmethod
    def from_avro(cls, d: Mapping[str, Any]) -> LabelRecorded:
        return cls(
            event_id=d["event_id"],
            event_time=d["event_time"],
            produced_at=d["produced_at"],
            producer=d["producer"],
            correlation_id=d["correlation_id"],
            causation_id=d.get("causation_id", None),
            labelled_event_id=d["labelled_event_id"],
            entity_id=d["entity_id"],
            label=d["label"],
            source=d.get("source", 'http'),
            project=d.get("project", None),
        )

    def to_avro(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "event_time": self.event_time,
            "produced_at": self.produced_at,
            "producer": self.producer,
            "correlation_id": self.correlation_id,
            "causation_id": self.causation_id,
            "labelled_event_id": self.labelled_event_id,
            "entity_id": self.entity_id,
            "label": self.label,
            "source": self.source,
            "project": self.project,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelPromoted:
    """A model version's role changed (topic models.promoted): it became champion (promotion or rollback), challenger in shadow, or canary serving a share of the traffic, or its canary ended."""

    RECORD: ClassVar[str] = "ModelPromoted"
    event_id: str
    event_time: datetime
    produced_at: datetime
    producer: str
    correlation_id: str
    causation_id: str | None = None
    model_name: str
    version: int
    run_id: str
    artifact_bucket: str
    artifact_key: str
    artifact_sha256: str
    metadata_key: str
    metadata_sha256: str
    feature_names: tuple[str, ...]
    previous_version: int | None = None
    action: str
    reason: str
    actor: str
    metrics: dict[str, float]
    drift_episode_id: str | None = None
    metric: str | None = None
    candidate_value: float | None = None
    champion_value: float | None = None
    margin: float | None = None
    floor: float | None = None
    traffic_fraction: float | None = None

    @classmethod
    def from_avro(cls, d: Mapping[str, Any]) -> ModelPromoted:
        return cls(
            event_id=d["event_id"],
            event_time=d["event_time"],
            produced_at=d["produced_at"],
            producer=d["producer"],
            correlation_id=d["correlation_id"],
            causation_id=d.get("causation_id", None),
            model_name=d["model_name"],
            version=d["version"],
            run_id=d["run_id"],
            artifact_bucket=d["artifact_bucket"],
            artifact_key=d["artifact_key"],
            artifact_sha256=d["artifact_sha256"],
            metadata_key=d["metadata_key"],
            metadata_sha256=d["metadata_sha256"],
            feature_names=tuple(d["feature_names"]),
            previous_version=d.get("previous_version", None),
            action=d["action"],
            reason=d["reason"],
            actor=d["actor"],
            metrics=d["metrics"],
            drift_episode_id=d.get("drift_episode_id", None),
            metric=d.get("metric", None),
            candidate_value=d.get("candidate_value", None),
            champion_value=d.get("champion_value", None),
            margin=d.get("margin", None),
            floor=d.get("floor", None),
            traffic_fraction=d.get("traffic_fraction", None),
        )

    def to_avro(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "event_time": self.event_time,
            "produced_at": self.produced_at,
            "producer": self.producer,
            "correlation_id": self.correlation_id,
            "causation_id": self.causation_id,
            "model_name": self.model_name,
            "version": self.version,
            "run_id": self.run_id,
            "artifact_bucket": self.artifact_bucket,
            "artifact_key": self.artifact_key,
            "artifact_sha256": self.artifact_sha256,
            "metadata_key": self.metadata_key,
            "metadata_sha256": self.metadata_sha256,
            "feature_names": list(self.feature_names),
            "previous_version": self.previous_version,
            "action": self.action,
            "reason": self.reason,
            "actor": self.actor,
            "metrics": self.metrics,
            "drift_episode_id": self.drift_episode_id,
            "metric": self.metric,
            "candidate_value": self.candidate_value,
            "champion_value": self.champion_value,
            "margin": self.margin,
            "floor": self.floor,
            "traffic_fraction": self.traffic_fraction,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelRejected:
    """A candidate did not pass the promotion policy (topic models.rejected)."""

    RECORD: ClassVar[str] = "ModelRejected"
    event_id: str
    event_time: datetime
    produced_at: datetime
    producer: str
    correlation_id: str
    causation_id: str | None = None
    model_name: str
    version: int
    run_id: str
    reason: str
    metric: str
    candidate_value: float | None
    champion_value: float | None = None
    margin: float
    floor: float

    @classmethod
    def from_avro(cls, d: Mapping[str, Any]) -> ModelRejected:
        return cls(
            event_id=d["event_id"],
            event_time=d["event_time"],
            produced_at=d["produced_at"],
            producer=d["producer"],
            correlation_id=d["correlation_id"],
            causation_id=d.get("causation_id", None),
            model_name=d["model_name"],
            version=d["version"],
            run_id=d["run_id"],
            reason=d["reason"],
            metric=d["metric"],
            candidate_value=d["candidate_value"],
            champion_value=d.get("champion_value", None),
            margin=d["margin"],
            floor=d["floor"],
        )

    def to_avro(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "event_time": self.event_time,
            "produced_at": self.produced_at,
            "producer": self.producer,
            "correlation_id": self.correlation_id,
            "causation_id": self.causation_id,
            "model_name": self.model_name,
            "version": self.version,
            "run_id": self.run_id,
            "reason": self.reason,
            "metric": self.metric,
            "candidate_value": self.candidate_value,
            "champion_value": self.champion_value,
            "margin": self.margin,
            "floor": self.floor,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelTrained:
    """A training run produced a candidate model (topic models.trained)."""

    RECORD: ClassVar[str] = "ModelTrained"
    event_id: str
    event_time: datetime
    produced_at: datetime
    producer: str
    correlation_id: str
    causation_id: str | None = None
    run_id: str
    model_name: str
    artifact_bucket: str
    artifact_key: str
    artifact_sha256: str
    metadata_key: str
    metadata_sha256: str
    metrics: dict[str, float]
    champion_metrics: dict[str, float] | None = None
    champion_version: int | None = None
    dataset_fingerprint: str
    holdout_fingerprint: str
    feature_set_version: str
    feature_names: tuple[str, ...]
    params: dict[str, str]
    n_train: int
    n_holdout: int
    duration_s: float
    trigger: str
    drift_episode_id: str | None = None
    training_request_id: str | None = None
    comparison_metrics: dict[str, float] | None = None
    n_comparison: int | None = None
    comparison_wins: int | None = None
    comparison_losses: int | None = None
    training_set_key: str | None = None
    training_set_sha256: str | None = None
    training_set_size: int | None = None
    labels_as_of: datetime | None = None
    train_start: datetime | None = None
    holdout_end: datetime | None = None
    code_version: str | None = None
    refresh: bool = False

    @classmethod
    def from_avro(cls, d: Mapping[str, Any]) -> ModelTrained:
        return cls(
            event_id=d["event_id"],
            event_time=d["event_time"],
            produced_at=d["produced_at"],
            producer=d["producer"],
            correlation_id=d["correlation_id"],
            causation_id=d.get("causation_id", None),
            run_id=d["run_id"],
            model_name=d["model_name"],
            artifact_bucket=d["artifact_bucket"],
            artifact_key=d["artifact_key"],
            artifact_sha256=d["artifact_sha256"],
            metadata_key=d["metadata_key"],
            metadata_sha256=d["metadata_sha256"],
            metrics=d["metrics"],
            champion_metrics=d.get("champion_metrics", None),
            champion_version=d.get("champion_version", None),
            dataset_fingerprint=d["dataset_fingerprint"],
            holdout_fingerprint=d["holdout_fingerprint"],
            feature_set_version=d["feature_set_version"],
            feature_names=tuple(d["feature_names"]),
            params=d["params"],
            n_train=d["n_train"],
            n_holdout=d["n_holdout"],
            duration_s=d["duration_s"],
            trigger=d["trigger"],
            drift_episode_id=d.get("drift_episode_id", None),
            training_request_id=d.get("training_request_id", None),
            comparison_metrics=d.get("comparison_metrics", None),
            n_comparison=d.get("n_comparison", None),
            comparison_wins=d.get("comparison_wins", None),
            comparison_losses=d.get("comparison_losses", None),
            training_set_key=d.get("training_set_key", None),
            training_set_sha256=d.get("training_set_sha256", None),
            training_set_size=d.get("training_set_size", None),
            labels_as_of=d.get("labels_as_of", None),
            train_start=d.get("train_start", None),
            holdout_end=d.get("holdout_end", None),
            code_version=d.get("code_version", None),
            refresh=d.get("refresh", False),
        )

    def to_avro(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "event_time": self.event_time,
            "produced_at": self.produced_at,
            "producer": self.producer,
            "correlation_id": self.correlation_id,
            "causation_id": self.causation_id,
            "run_id": self.run_id,
            "model_name": self.model_name,
            "artifact_bucket": self.artifact_bucket,
            "artifact_key": self.artifact_key,
            "artifact_sha256": self.artifact_sha256,
            "metadata_key": self.metadata_key,
            "metadata_sha256": self.metadata_sha256,
            "metrics": self.metrics,
            "champion_metrics": self.champion_metrics,
            "champion_version": self.champion_version,
            "dataset_fingerprint": self.dataset_fingerprint,
            "holdout_fingerprint": self.holdout_fingerprint,
            "feature_set_version": self.feature_set_version,
            "feature_names": list(self.feature_names),
            "params": self.params,
            "n_train": self.n_train,
            "n_holdout": self.n_holdout,
            "duration_s": self.duration_s,
            "trigger": self.trigger,
            "drift_episode_id": self.drift_episode_id,
            "training_request_id": self.training_request_id,
            "comparison_metrics": self.comparison_metrics,
            "n_comparison": self.n_comparison,
            "comparison_wins": self.comparison_wins,
            "comparison_losses": self.comparison_losses,
            "training_set_key": self.training_set_key,
            "training_set_sha256": self.training_set_sha256,
            "training_set_size": self.training_set_size,
            "labels_as_of": self.labels_as_of,
            "train_start": self.train_start,
            "holdout_end": self.holdout_end,
            "code_version": self.code_version,
            "refresh": self.refresh,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class PredictionMade:
    """A model's prediction for one event (topic predictions): of a features.vectors record (stream) or of a POST /v1/predict request (http)."""

    RECORD: ClassVar[str] = "PredictionMade"
    event_id: str
    event_time: datetime
    produced_at: datetime
    producer: str
    correlation_id: str
    causation_id: str | None = None
    source_event_id: str
    entity_id: str
    model_name: str
    model_version: int
    slot: str = 'champion'
    shadow: bool = False
    score: float
    predicted_class: str | None = None
    scoring_latency_ms: float
    served: str | None = None

    @classmethod
    def from_avro(cls, d: Mapping[str, Any]) -> PredictionMade:
        return cls(
            event_id=d["event_id"],
            event_time=d["event_time"],
            produced_at=d["produced_at"],
            producer=d["producer"],
            correlation_id=d["correlation_id"],
            causation_id=d.get("causation_id", None),
            source_event_id=d["source_event_id"],
            entity_id=d["entity_id"],
            model_name=d["model_name"],
            model_version=d["model_version"],
            slot=d.get("slot", 'champion'),
            shadow=d.get("shadow", False),
            score=d["score"],
            predicted_class=d.get("predicted_class", None),
            scoring_latency_ms=d["scoring_latency_ms"],
            served=d.get("served", None),
        )

    def to_avro(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "event_time": self.event_time,
            "produced_at": self.produced_at,
            "producer": self.producer,
            "correlation_id": self.correlation_id,
            "causation_id": self.causation_id,
            "source_event_id": self.source_event_id,
            "entity_id": self.entity_id,
            "model_name": self.model_name,
            "model_version": self.model_version,
            "slot": self.slot,
            "shadow": self.shadow,
            "score": self.score,
            "predicted_class": self.predicted_class,
            "scoring_latency_ms": self.scoring_latency_ms,
            "served": self.served,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class ProjectApplied:
    """A project's definition, applied at run time (topic projects, compacted: the latest record per project is its current definition)."""

    RECORD: ClassVar[str] = "ProjectApplied"
    event_id: str
    event_time: datetime
    produced_at: datetime
    producer: str
    correlation_id: str
    causation_id: str | None = None
    project: str
    version: int
    deleted: bool = False
    spec: str
    payload_schema: str
    digest: str
    feature_set_version: str
    changes: tuple[str, ...] = ()
    applied_by: str = ''

    @classmethod
    def from_avro(cls, d: Mapping[str, Any]) -> ProjectApplied:
        return cls(
            event_id=d["event_id"],
            event_time=d["event_time"],
            produced_at=d["produced_at"],
            producer=d["producer"],
            correlation_id=d["correlation_id"],
            causation_id=d.get("causation_id", None),
            project=d["project"],
            version=d["version"],
            deleted=d.get("deleted", False),
            spec=d["spec"],
            payload_schema=d["payload_schema"],
            digest=d["digest"],
            feature_set_version=d["feature_set_version"],
            changes=tuple(d.get("changes", ())),
            applied_by=d.get("applied_by", ''),
        )

    def to_avro(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "event_time": self.event_time,
            "produced_at": self.produced_at,
            "producer": self.producer,
            "correlation_id": self.correlation_id,
            "causation_id": self.causation_id,
            "project": self.project,
            "version": self.version,
            "deleted": self.deleted,
            "spec": self.spec,
            "payload_schema": self.payload_schema,
            "digest": self.digest,
            "feature_set_version": self.feature_set_version,
            "changes": list(self.changes),
            "applied_by": self.applied_by,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class RawEvent:
    """A domain event accepted by ingestion (topic events.raw). The payload was validated against the project's event schema."""

    RECORD: ClassVar[str] = "RawEvent"
    event_id: str
    event_time: datetime
    produced_at: datetime
    producer: str
    correlation_id: str
    causation_id: str | None = None
    event_type: str
    entity_id: str
    payload: dict[str, bool | int | float | str | None]
    source: str = 'http'
    project: str | None = None

    @classmethod
    def from_avro(cls, d: Mapping[str, Any]) -> RawEvent:
        return cls(
            event_id=d["event_id"],
            event_time=d["event_time"],
            produced_at=d["produced_at"],
            producer=d["producer"],
            correlation_id=d["correlation_id"],
            causation_id=d.get("causation_id", None),
            event_type=d["event_type"],
            entity_id=d["entity_id"],
            payload=d["payload"],
            source=d.get("source", 'http'),
            project=d.get("project", None),
        )

    def to_avro(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "event_time": self.event_time,
            "produced_at": self.produced_at,
            "producer": self.producer,
            "correlation_id": self.correlation_id,
            "causation_id": self.causation_id,
            "event_type": self.event_type,
            "entity_id": self.entity_id,
            "payload": self.payload,
            "source": self.source,
            "project": self.project,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainingFailed:
    """A training run could not produce a model (topic training.failed)."""

    RECORD: ClassVar[str] = "TrainingFailed"
    event_id: str
    event_time: datetime
    produced_at: datetime
    producer: str
    correlation_id: str
    causation_id: str | None = None
    run_id: str | None = None
    model_name: str
    reason: str
    error_type: str
    training_request_id: str | None = None
    drift_episode_id: str | None = None
    retryable: bool = False

    @classmethod
    def from_avro(cls, d: Mapping[str, Any]) -> TrainingFailed:
        return cls(
            event_id=d["event_id"],
            event_time=d["event_time"],
            produced_at=d["produced_at"],
            producer=d["producer"],
            correlation_id=d["correlation_id"],
            causation_id=d.get("causation_id", None),
            run_id=d.get("run_id", None),
            model_name=d["model_name"],
            reason=d["reason"],
            error_type=d["error_type"],
            training_request_id=d.get("training_request_id", None),
            drift_episode_id=d.get("drift_episode_id", None),
            retryable=d.get("retryable", False),
        )

    def to_avro(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "event_time": self.event_time,
            "produced_at": self.produced_at,
            "producer": self.producer,
            "correlation_id": self.correlation_id,
            "causation_id": self.causation_id,
            "run_id": self.run_id,
            "model_name": self.model_name,
            "reason": self.reason,
            "error_type": self.error_type,
            "training_request_id": self.training_request_id,
            "drift_episode_id": self.drift_episode_id,
            "retryable": self.retryable,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainingRequested:
    """An order to train a model now (topic training.requested): from the API, the CLI or ops."""

    RECORD: ClassVar[str] = "TrainingRequested"
    event_id: str
    event_time: datetime
    produced_at: datetime
    producer: str
    correlation_id: str
    causation_id: str | None = None
    request_id: str
    model_name: str
    reason: str
    requested_by: str
    drift_episode_id: str | None = None
    since: int | None = None
    parameters: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_avro(cls, d: Mapping[str, Any]) -> TrainingRequested:
        return cls(
            event_id=d["event_id"],
            event_time=d["event_time"],
            produced_at=d["produced_at"],
            producer=d["producer"],
            correlation_id=d["correlation_id"],
            causation_id=d.get("causation_id", None),
            request_id=d["request_id"],
            model_name=d["model_name"],
            reason=d["reason"],
            requested_by=d["requested_by"],
            drift_episode_id=d.get("drift_episode_id", None),
            since=d.get("since", None),
            parameters=d.get("parameters", {}),
        )

    def to_avro(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "event_time": self.event_time,
            "produced_at": self.produced_at,
            "producer": self.producer,
            "correlation_id": self.correlation_id,
            "causation_id": self.causation_id,
            "request_id": self.request_id,
            "model_name": self.model_name,
            "reason": self.reason,
            "requested_by": self.requested_by,
            "drift_episode_id": self.drift_episode_id,
            "since": self.since,
            "parameters": self.parameters,
        }


Record = ChallengerCompared | DeadLetter | DeploymentStatusChanged | DriftDetected | FeatureVectorComputed | LabelRecorded | ModelPromoted | ModelRejected | ModelTrained | PredictionMade | ProjectApplied | RawEvent | TrainingFailed | TrainingRequested
"""Any top-level record type (the value of a topic)."""

RECORD_TYPES: dict[str, type[Record]] = {
    "ChallengerCompared": ChallengerCompared,
    "DeadLetter": DeadLetter,
    "DeploymentStatusChanged": DeploymentStatusChanged,
    "DriftDetected": DriftDetected,
    "FeatureVectorComputed": FeatureVectorComputed,
    "LabelRecorded": LabelRecorded,
    "ModelPromoted": ModelPromoted,
    "ModelRejected": ModelRejected,
    "ModelTrained": ModelTrained,
    "PredictionMade": PredictionMade,
    "ProjectApplied": ProjectApplied,
    "RawEvent": RawEvent,
    "TrainingFailed": TrainingFailed,
    "TrainingRequested": TrainingRequested,
}
