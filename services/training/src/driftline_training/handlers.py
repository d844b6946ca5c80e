"""What the training service does with each record it consumes.

* ``features.vectors`` + ``labels`` → labelled examples (upserts; joined by the raw event id).
* ``drift.detected`` → at most one ``training.requested`` per drift episode, none within the
  cooldown of the previous drift-triggered request (decisions kept in PostgreSQL).
* ``models.promoted`` → the champion each run compares itself with.
* ``training.requested`` → a run: select, split by time, fit, evaluate candidate and champion on
  the same holdout, write the skops model and its metadata to the object store, announce
  ``models.trained`` (or ``training.failed``). ``run_id`` derives from the request id, so a
  re-delivered request finds its run instead of fitting again.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.metadata
import json
import math
import os
import platform
import subprocess
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from minio.error import S3Error

from driftline.artifacts import ArtifactIntegrityError, ArtifactNotFound, ArtifactStore
from driftline.catalog import FEATURES_VECTORS, LABELS, MODELS_TRAINED, TRAINING_FAILED, TRAINING_REQUESTED
from driftline.events import Event, as_utc, derived_event_id, envelope, epoch_ms, now_utc
from driftline.kafka import PoisonRecord, is_transient
from driftline.logging import get_logger
from driftline.models import UnsafeArtifactError, load_model
from driftline.outbox import Outbox
from driftline.project import Project, TrainingPolicy
from driftline.settings import repo_root
from driftline_training import pipeline
from driftline_training.pipeline import FitResult, TrainingFailure
from driftline_training.store import Champion, LabelRow, TrainingStore, VectorRow, request_event_id_of

log = get_logger(__name__)
T = TypeVar("T")

SERVICE = "training"


@functools.cache
def code_version() -> str:
    """``DRIFTLINE_CODE_VERSION``, else the checkout's git commit, else the package version."""
    explicit = os.environ.get("DRIFTLINE_CODE_VERSION")
    if explicit:
        return explicit
    root = repo_root()
    if root is not None:
        try:
            out = subprocess.run(
                ["git", "rev-parse", "HEAD"],  # noqa: S607 - git from PATH, fixed arguments
                cwd=root,
                capture_output=True,
                text=True,
                timeout=5,
                check=True,
            )
            dirty = subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],  # noqa: S607
                cwd=root,
                capture_output=True,
                text=True,
                timeout=5,
                check=False,
            )
            return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
        except (OSError, subprocess.SubprocessError):
            pass
    return f"driftline-training {importlib.metadata.version('driftline-training')}"


@functools.cache
def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("scikit-learn", "numpy", "scipy", "skops", "driftline", "driftline-training"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "unknown"
    return out


def artifact_keys(model_name: str, run_id: str) -> tuple[str, str]:
    base = f"models/{model_name}/{run_id}"
    return f"{base}/model.skops", f"{base}/metadata.json"


def request_record(
    *,
    request_id: str,
    model_name: str,
    reason: str,
    requested_by: str,
    cause: Event | Mapping[str, Any] | None = None,
    drift_episode_id: str | None = None,
    since: datetime | None = None,
    parameters: Mapping[str, str] | None = None,
    producer: str = SERVICE,
) -> dict[str, Any]:
    """A TrainingRequested record; its event id derives from the request id (a re-send is a duplicate)."""
    return {
        **envelope(producer, cause=cause, event_id=request_event_id_of(request_id)),
        "request_id": request_id,
        "model_name": model_name,
        "reason": reason,
        "requested_by": requested_by,
        "drift_episode_id": drift_episode_id,
        "since": epoch_ms(since) if since is not None else None,
        "parameters": dict(parameters or {}),
    }


def _param_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


def _clean_features(features: Mapping[str, Any]) -> dict[str, Any]:
    """NaN/inf are not JSON: store them as missing."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in features.items()}


@dataclass
class RunOutcome:
    """What a successful run produced (before it is announced)."""

    record: dict[str, Any]
    fields: dict[str, Any]
    result: FitResult
    timings: dict[str, float]


@dataclass
class TrainingHandlers:
    project: Project
    store: TrainingStore
    artifacts: ArtifactStore
    outbox: Outbox
    producer_name: str = SERVICE
    object_store_timeout_s: float = 60.0
    _initial_done: bool = field(default=False, init=False)

    # -- examples ------------------------------------------------------------------------------

    async def on_examples(self, events: list[Event]) -> None:
        """Batch handler of features.vectors and labels: upsert, then re-ask waiting drift runs, maybe a first model."""
        vectors: list[VectorRow] = []
        labels: list[LabelRow] = []
        classes = self.project.label.classes
        for e in events:
            v = e.value
            if e.topic == FEATURES_VECTORS:
                vectors.append(
                    VectorRow(
                        v["source_event_id"],
                        v["feature_set_version"],
                        v["event_id"],
                        v["entity_id"],
                        as_utc(v["event_time"]),
                        _clean_features(v["features"]),
                    )
                )
            elif e.topic == LABELS:
                label = v["label"]
                if not isinstance(label, str) or label not in classes:
                    raise PoisonRecord(
                        f"label {label!r} is not one of the project's classes {classes}", "invalid_label"
                    )
                labels.append(
                    LabelRow(v["labelled_event_id"], label, v["event_id"], v["entity_id"], as_utc(v["event_time"]))
                )
        await self.store.save_examples(vectors, labels)
        await self.retry_waiting_triggers()
        await self.maybe_request_initial()

    async def retry_waiting_triggers(self) -> None:
        """Ask again for drift runs that failed for lack of labelled examples, once they exist.

        Labels often lag the events: a drift episode must not be lost because its run came too
        early. The new request stays in the drift event's chain (same cause and correlation).
        """
        waiting = await self.store.waiting_triggers()
        if not waiting:
            return
        policy = self.project.training
        for t in waiting:
            since = t["since"] if policy.selection == "since_drift" else None
            labelled = await self.store.count_labelled(self.project.features.version, self.project.label.classes, since)
            if labelled < policy.min_examples:
                continue
            attempt = t["attempts"] + 1
            record = request_record(
                request_id=derived_event_id("drift-request", t["model_name"], t["episode_id"], attempt),
                model_name=t["model_name"],
                reason="drift",
                requested_by="training:drift-policy",
                cause={"event_id": t["source_event_id"], "correlation_id": t["correlation_id"]},
                drift_episode_id=t["episode_id"],
                since=t["since"],
                producer=self.producer_name,
            )
            if await self.store.retry_trigger(t["trigger_id"], TRAINING_REQUESTED, record):
                await self.outbox.publish([record["event_id"]])
                log.info(
                    "drift_training_requested_again",
                    episode_id=t["episode_id"],
                    attempt=attempt,
                    labelled=labelled,
                    request_id=record["request_id"],
                )

    async def maybe_request_initial(self) -> None:
        """The policy's ``initial_training_after``: request the first model once enough examples exist."""
        policy = self.project.training
        if policy.initial_training_after <= 0 or self._initial_done:
            return
        model, fsv = self.project.model.name, self.project.features.version
        trigger_id = f"initial:{model}:{fsv}"
        if await self.store.trigger_exists(trigger_id) or await self.store.get_champion(model) is not None:
            self._initial_done = True
            return
        counts = await self.store.example_counts(fsv, self.project.label.classes)
        if counts["labelled"] < policy.initial_training_after:
            return
        request_id = derived_event_id("initial-request", model, fsv)
        record = request_record(
            request_id=request_id,
            model_name=model,
            reason="initial",
            requested_by="training:initial-policy",
            producer=self.producer_name,
        )
        decision = await self.store.decide_trigger(
            trigger_id=trigger_id,
            kind="initial",
            model_name=model,
            event_time=now_utc(),
            cooldown_s=0.0,
            source_event_id=None,
            episode_id=None,
            request=(TRAINING_REQUESTED, record),
        )
        if decision.request_event_id:
            await self.outbox.publish([decision.request_event_id])
        log.info("initial_training_requested", request_id=request_id, labelled=counts["labelled"])
        self._initial_done = True

    # -- drift → training request ------------------------------------------------------------

    async def on_drift(self, event: Event) -> None:
        v = event.value
        model, episode = v["model_name"], v["episode_id"]
        # Train on what came after the change: its estimated onset when monitoring gives one
        # (performance drift), else the start of the window that drifted.
        onset = as_utc(v.get("onset") or v["window_start"])
        request_id = derived_event_id("drift-request", model, episode)
        record = request_record(
            request_id=request_id,
            model_name=model,
            reason="drift",
            requested_by="training:drift-policy",
            cause=event,
            drift_episode_id=episode,
            since=onset,
            producer=self.producer_name,
        )
        ignore = None
        if model != self.project.model.name:
            ignore = f"model {model!r} is not this project's model ({self.project.model.name!r})"
        decision = await self.store.decide_trigger(
            trigger_id=f"drift:{model}:{episode}",
            kind="drift",
            model_name=model,
            event_time=as_utc(v["event_time"]),
            cooldown_s=self.project.training.cooldown_s,
            source_event_id=event.event_id,
            episode_id=episode,
            request=(TRAINING_REQUESTED, record),
            ignore_reason=ignore,
            correlation_id=event.correlation_id,
            since=onset,
        )
        log.info(
            "drift_trigger_decided",
            episode_id=episode,
            decision=decision.decision,
            reason=decision.reason,
            request_id=decision.request_id,
            first_delivery=decision.new,
        )
        if decision.request_event_id:
            await self.outbox.publish([decision.request_event_id])

    # -- champions -----------------------------------------------------------------------------

    async def on_promoted(self, event: Event) -> None:
        v = event.value
        if v["action"] not in ("promote", "rollback"):
            return  # a shadow deployment does not change the champion
        champion = Champion(
            v["model_name"],
            int(v["version"]),
            v["run_id"],
            v["artifact_bucket"],
            v["artifact_key"],
            v["artifact_sha256"],
            list(v["feature_names"]),
        )
        await self.store.set_champion(champion, promoted_event_id=event.event_id, action=v["action"])
        log.info("champion_changed", model_name=champion.model_name, version=champion.version, action=v["action"])

    # -- runs -----------------------------------------------------------------------------------

    async def on_request(self, event: Event) -> None:
        """Run a training request once; a failing run becomes training.failed, never a stuck consumer."""
        v = event.value
        request_id = v["request_id"]
        run_id = derived_event_id("run", request_id)
        existing = await self.store.get_run(run_id)
        if existing is not None and existing["status"] != "running":
            # Already done: only make sure its announcement went out (a crash may have cut it off).
            await self.outbox.publish([existing["result_event_id"]])
            log.info("training_request_already_handled", run_id=run_id, status=existing["status"])
            return
        await self.store.start_run(
            run_id=run_id,
            request_id=request_id,
            request_event_id=event.event_id,
            model_name=v["model_name"],
            reason=v["reason"],
            requested_by=v["requested_by"],
            trigger="drift" if v["reason"] == "drift" else "request",
            drift_episode_id=v.get("drift_episode_id"),
            correlation_id=event.correlation_id,
            parameters=dict(v.get("parameters") or {}),
        )
        log.info("training_run_started", run_id=run_id, request_id=request_id, reason=v["reason"])
        started = time.perf_counter()
        try:
            outcome = await self.run(event, run_id, started=started)
        except TrainingFailure as failure:
            await self._fail(event, run_id, failure, started)
            return
        except Exception as exc:
            if is_transient(exc):
                raise  # an outage (PostgreSQL…): the runner retries the request, the run restarts
            log.exception("training_run_crashed", run_id=run_id)
            await self._fail(event, run_id, TrainingFailure("internal_error", f"{exc!r}"[:2000]), started)
            return
        await self.store.finish_run(
            run_id, status="succeeded", topic=MODELS_TRAINED, record=outcome.record, **outcome.fields
        )
        await self.outbox.publish([outcome.record["event_id"]])
        log.info(
            "training_run_succeeded",
            run_id=run_id,
            metrics=outcome.record["metrics"],
            champion_version=outcome.record["champion_version"],
            champion_metrics=outcome.record["champion_metrics"],
            duration_s=round(outcome.record["duration_s"], 3),
        )

    async def _fail(self, event: Event, run_id: str, failure: TrainingFailure, started: float) -> None:
        v = event.value
        record = {
            **envelope(self.producer_name, cause=event, event_id=derived_event_id("training-failed", run_id)),
            "run_id": run_id,
            "model_name": v["model_name"],
            "reason": failure.reason,
            "error_type": failure.error_type,
            "training_request_id": v["request_id"],
            "drift_episode_id": v.get("drift_episode_id"),
            "retryable": failure.retryable,
        }
        wait_trigger = None
        if v["reason"] == "drift" and failure.error_type == "too_few_examples" and v.get("drift_episode_id"):
            wait_trigger = f"drift:{v['model_name']}:{v['drift_episode_id']}"
        await self.store.finish_run(
            run_id,
            status="failed",
            topic=TRAINING_FAILED,
            record=record,
            wait_trigger=wait_trigger,
            error_type=failure.error_type,
            error_reason=failure.reason,
            duration_s=time.perf_counter() - started,
        )
        await self.outbox.publish([record["event_id"]])
        log.warning("training_run_failed", run_id=run_id, error_type=failure.error_type, reason=failure.reason)

    async def _object_store(self, op: Awaitable[T], what: str) -> T:
        """An object-store call, retried (by the store) for at most ``object_store_timeout_s``."""
        try:
            return await asyncio.wait_for(op, self.object_store_timeout_s)
        except TimeoutError:
            raise TrainingFailure(
                "object_store_unavailable",
                f"the object store did not complete {what} within {self.object_store_timeout_s:g}s of retries",
                retryable=True,
            ) from None
        except S3Error as exc:
            raise TrainingFailure("object_store_error", f"the object store refused {what}: {exc}") from None

    async def select(self, request: Mapping[str, Any], policy: TrainingPolicy) -> tuple[list[pipeline.Example], Any]:
        """Examples for a run: the most recent ``max_examples``, after the drift onset for since_drift."""
        since = None
        if policy.selection == "since_drift" and request.get("since") is not None:
            since = as_utc(request["since"])
        examples = await self.store.select_examples(
            self.project.features.version, self.project.label.classes, since=since, limit=policy.max_examples
        )
        return examples, since

    async def run(self, event: Event, run_id: str, *, started: float | None = None) -> RunOutcome:
        """One training run, up to the stored artifacts; returns the ModelTrained record to announce."""
        started = time.perf_counter() if started is None else started
        v = event.value
        project = self.project
        model_name = v["model_name"]
        if model_name != project.model.name:
            raise TrainingFailure("unknown_model", f"model {model_name!r} is not this project's model")
        policy = pipeline.effective_policy(project.training, v.get("parameters") or {})
        timings: dict[str, float] = {}

        t = time.perf_counter()
        examples, since = await self.select(v, policy)
        timings["select_s"] = time.perf_counter() - t
        if len(examples) < policy.min_examples:
            where = f" at or after {since.isoformat()} (drift onset)" if since else ""
            raise TrainingFailure(
                "too_few_examples",
                f"{len(examples)} labelled examples{where}, the policy needs at least {policy.min_examples}",
                retryable=True,
            )

        result = await asyncio.to_thread(pipeline.fit, project, examples, policy)
        timings.update(result.timings)

        t = time.perf_counter()
        champion = await self.store.get_champion(model_name)
        champion_metrics, champion_error = None, None
        if champion is not None:
            champion_metrics, champion_error = await self._evaluate_champion(champion, result)
        timings["champion_s"] = time.perf_counter() - t

        artifact_key, metadata_key = artifact_keys(model_name, run_id)
        t = time.perf_counter()
        model_ref = await self._object_store(self.artifacts.put(artifact_key, result.model_bytes), "the model upload")
        timings["upload_s"] = time.perf_counter() - t
        duration_s = time.perf_counter() - started
        champion_version = champion.version if champion is not None and champion_metrics is not None else None
        metadata = {
            "run_id": run_id,
            "model_name": model_name,
            "created_at": now_utc().isoformat(),
            "estimator": project.model.estimator,
            "params": result.params,
            "seed": result.seed,
            "feature_names": result.feature_names,
            "feature_set_version": project.features.version,
            "classes": result.classes,
            "positive_class": project.label.positive_class,
            "metrics": result.metrics,
            "champion_version": champion_version,
            "champion_metrics": champion_metrics,
            "champion_evaluation_error": champion_error,
            "dataset_fingerprint": result.dataset_fingerprint,
            "holdout_fingerprint": result.holdout_fingerprint,
            "n_train": len(result.train),
            "n_holdout": len(result.holdout),
            "label_counts": result.label_counts,
            "selection": {
                "policy": policy.selection,
                "since": since.isoformat() if since else None,
                "max_examples": policy.max_examples,
                "holdout_fraction": policy.holdout_fraction,
                **result.time_ranges(),
            },
            "library_versions": library_versions(),
            "code_version": code_version(),
            "duration_s": duration_s,
            "fit_seconds": result.fit_seconds,
            "timings": timings,
            "trigger": "drift" if v["reason"] == "drift" else "request",
            "reason": v["reason"],
            "requested_by": v["requested_by"],
            "drift_episode_id": v.get("drift_episode_id"),
            "training_request_id": v["request_id"],
            "correlation_id": event.correlation_id,
            "artifact_bucket": model_ref.bucket,
            "artifact_key": artifact_key,
            "artifact_sha256": model_ref.sha256,
            "artifact_size": model_ref.size,
            "reference_profile": result.reference_profile,
        }
        t = time.perf_counter()
        metadata_ref = await self._object_store(self.artifacts.put_json(metadata_key, metadata), "the metadata upload")
        timings["upload_s"] += time.perf_counter() - t
        record = {
            **envelope(self.producer_name, cause=event, event_id=derived_event_id("model-trained", run_id)),
            "run_id": run_id,
            "model_name": model_name,
            "artifact_bucket": model_ref.bucket,
            "artifact_key": artifact_key,
            "artifact_sha256": model_ref.sha256,
            "metadata_key": metadata_key,
            "metadata_sha256": metadata_ref.sha256,
            "metrics": result.metrics,
            "champion_metrics": champion_metrics,
            "champion_version": champion_version,
            "dataset_fingerprint": result.dataset_fingerprint,
            "holdout_fingerprint": result.holdout_fingerprint,
            "feature_set_version": project.features.version,
            "feature_names": result.feature_names,
            "params": {k: _param_text(p) for k, p in result.params.items()},
            "n_train": len(result.train),
            "n_holdout": len(result.holdout),
            "duration_s": duration_s,
            "trigger": metadata["trigger"],
            "drift_episode_id": v.get("drift_episode_id"),
            "training_request_id": v["request_id"],
        }
        fields = {
            "metrics": result.metrics,
            "champion_version": champion_version,
            "champion_metrics": champion_metrics,
            "n_train": len(result.train),
            "n_holdout": len(result.holdout),
            "dataset_fingerprint": result.dataset_fingerprint,
            "holdout_fingerprint": result.holdout_fingerprint,
            "artifact_key": artifact_key,
            "artifact_sha256": model_ref.sha256,
            "metadata_key": metadata_key,
            "metadata_sha256": metadata_ref.sha256,
            "duration_s": duration_s,
        }
        return RunOutcome(record, fields, result, timings)

    async def _evaluate_champion(
        self, champion: Champion, result: FitResult
    ) -> tuple[dict[str, float] | None, str | None]:
        """The champion's metrics on this run's holdout, or why it could not be evaluated.

        Its artifact is verified (SHA-256) and loaded under the trusted-types policy; a tampered or
        unsafe file is refused, and the run says so (the registry then cannot promote on a
        comparison that did not happen).
        """
        positive = self.project.label.positive_class
        try:
            data = await self._object_store(
                self.artifacts.get(champion.artifact_key, champion.artifact_sha256),
                f"the download of champion v{champion.version}",
            )
            model = await asyncio.to_thread(load_model, data)
            metrics = await asyncio.to_thread(
                pipeline.evaluate_on_holdout, model, result.holdout, champion.feature_names, positive
            )
            return metrics, None
        except TrainingFailure as failure:
            if failure.error_type == "object_store_unavailable":
                raise
            error = failure.reason
        except (ArtifactIntegrityError, ArtifactNotFound, UnsafeArtifactError) as exc:
            error = str(exc)
        except Exception as exc:
            if is_transient(exc):
                raise
            error = f"champion v{champion.version} could not be evaluated: {exc!r}"[:1000]
        log.warning("champion_not_evaluated", champion_version=champion.version, error=error)
        return None, error
