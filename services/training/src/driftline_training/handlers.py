"""What the training service does with each record it consumes.

* ``features.vectors`` + ``labels`` → labelled examples (upserts; joined by the raw event id).
* ``drift.detected`` → at most one ``training.requested`` per drift episode, none within the
  cooldown of another drift-triggered request whose run has not failed (decisions kept in
  PostgreSQL); when a run fails for good, a drift its cooldown suppressed is requested after all.
* ``models.promoted`` → the champion each run compares itself with.
* ``training.requested`` → a run: select, split by time, fit, evaluate candidate and champion on
  the same holdout, write the skops model and its metadata to the object store, announce
  ``models.trained`` (or ``training.failed``). ``run_id`` derives from the request id, so a
  re-delivered request finds its run instead of fitting again. A run is bounded by
  ``max_run_seconds``; an object-store outage is retried (new attempts after a pause) within it.
  Artifacts are content-addressed (the key names the SHA-256), so two attempts of one run never
  overwrite each other's file and an announced digest always matches its object.
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
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from minio.error import S3Error

from driftline.artifacts import ArtifactIntegrityError, ArtifactNotFound, ArtifactStore, json_bytes, sha256_hex
from driftline.catalog import FEATURES_VECTORS, LABELS, MODELS_TRAINED, TRAINING_FAILED, TRAINING_REQUESTED
from driftline.events import Event, as_utc, derived_event_id, envelope, epoch_ms, now_utc
from driftline.kafka import PoisonRecord, is_transient
from driftline.logging import get_logger
from driftline.outbox import Outbox
from driftline.project import Project, TrainingPolicy
from driftline.settings import repo_root
from driftline_ml.models import UnsafeArtifactError, load_model
from driftline_training import pipeline
from driftline_training.pipeline import RETRIED_IN_PLACE, FitResult, TrainingFailure
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


def model_key(model_name: str, run_id: str, sha256: str) -> str:
    """Content-addressed: an object is only ever written with the bytes its key names."""
    return f"models/{model_name}/{run_id}/model-{sha256}.skops"


def metadata_key(model_name: str, run_id: str, sha256: str) -> str:
    return f"models/{model_name}/{run_id}/metadata-{sha256}.json"


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
    max_run_seconds: float = 1800.0
    run_attempts: int = 3
    retry_backoff_s: float = 15.0
    min_comparison_examples: int = 50
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
        """Ask for drift runs that waited, or failed, for lack of labelled examples, once they exist.

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
            record = self._trigger_request(
                t, derived_event_id("drift-request", t["model_name"], t["episode_id"], attempt)
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

    def _trigger_request(self, t: Mapping[str, Any], request_id: str) -> dict[str, Any]:
        """A drift request for a stored trigger, in its drift event's chain (same cause and correlation)."""
        return request_record(
            request_id=request_id,
            model_name=t["model_name"],
            reason="drift",
            requested_by="training:drift-policy",
            cause={"event_id": t["source_event_id"], "correlation_id": t["correlation_id"]},
            drift_episode_id=t["episode_id"],
            since=t["since"],
            producer=self.producer_name,
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
        # Labels lag the events: right after a drift, few of the examples since its onset may be
        # labelled yet. Then the trigger waits (holding the cooldown) and the request goes out
        # once the policy's minimum exists (retry_waiting_triggers), rather than a run that can
        # only fail for want of examples.
        policy = self.project.training
        labelled = None
        if ignore is None:
            labelled = await self.store.count_labelled(
                self.project.features.version,
                self.project.label.classes,
                onset if policy.selection == "since_drift" else None,
            )
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
            defer=labelled is not None and labelled < policy.min_examples,
        )
        log.info(
            "drift_trigger_decided",
            episode_id=episode,
            decision=decision.decision,
            reason=decision.reason,
            request_id=decision.request_id,
            labelled_since_onset=labelled,
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
            v.get("metadata_key"),
            v.get("metadata_sha256"),
        )
        await self.store.set_champion(champion, promoted_event_id=event.event_id, action=v["action"])
        log.info("champion_changed", model_name=champion.model_name, version=champion.version, action=v["action"])

    # -- runs -----------------------------------------------------------------------------------

    async def on_request(self, event: Event) -> None:
        """Run a training request once; a failing run becomes training.failed, never a stuck consumer.

        The whole handling, retries included, is bounded by ``max_run_seconds``: past it the run
        fails with ``run_timeout`` (a fit in progress cannot be interrupted; it finishes in the
        background and its result is dropped). A failure in RETRIED_IN_PLACE (an object-store
        outage) is tried again after a pause that doubles, at most ``run_attempts`` times in all.
        """
        v = event.value
        request_id = v["request_id"]
        run_id = derived_event_id("run", request_id)
        existing = await self.store.get_run(run_id)
        if existing is not None and existing["status"] != "running":
            # Already done: only make sure its announcement went out (a crash may have cut it off).
            await self.outbox.publish([existing["result_event_id"]])
            log.info("training_run_already_handled", run_id=run_id, status=existing["status"])
            return
        started = time.perf_counter()
        deadline = started + self.max_run_seconds
        tries = 0
        while True:
            tries += 1
            attempt = await self.store.start_run(
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
            log.info("training_run_started", run_id=run_id, request_id=request_id, reason=v["reason"], attempt=attempt)
            result = await self._attempt(event, run_id, started=started, deadline=deadline, attempt=attempt)
            if isinstance(result, RunOutcome):
                await self._succeed(run_id, result)
                return
            failure = result
            delay = self.retry_backoff_s * 2 ** (tries - 1)
            if (
                failure.error_type in RETRIED_IN_PLACE
                and tries < self.run_attempts
                and time.perf_counter() + delay < deadline
            ):
                log.warning(
                    "training_run_retrying",
                    run_id=run_id,
                    error_type=failure.error_type,
                    reason=failure.reason,
                    attempt=tries,
                    retry_in_s=delay,
                )
                await asyncio.sleep(delay)
                continue
            if failure.error_type in RETRIED_IN_PLACE and tries > 1:
                failure = TrainingFailure(
                    failure.error_type, f"{failure.reason} (after {tries} attempts)", retryable=failure.retryable
                )
            await self._fail(event, run_id, failure, started)
            return

    async def _attempt(
        self, event: Event, run_id: str, *, started: float, deadline: float, attempt: int
    ) -> RunOutcome | TrainingFailure:
        """One attempt of a run, within the run's deadline: its outcome, or why it failed."""
        try:
            async with asyncio.timeout(max(0.0, deadline - time.perf_counter())) as budget:
                return await self.run(event, run_id, started=started, attempt=attempt)
        except TrainingFailure as failure:
            return failure
        except TimeoutError:
            if budget.expired():
                return TrainingFailure(
                    "run_timeout",
                    f"the run did not finish within max_run_seconds ({self.max_run_seconds:g}s)",
                )
            raise  # a timeout inside the run: an outage, retried by the runner
        except Exception as exc:
            if is_transient(exc):
                raise  # an outage (PostgreSQL…): the runner retries the request, the run restarts
            log.exception("training_run_crashed", run_id=run_id)
            return TrainingFailure("internal_error", f"{exc!r}"[:2000])

    async def _succeed(self, run_id: str, outcome: RunOutcome) -> None:
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
        drift_trigger = None
        if v["reason"] == "drift" and v.get("drift_episode_id"):
            drift_trigger = f"drift:{v['model_name']}:{v['drift_episode_id']}"
        await self.store.finish_run(
            run_id,
            status="failed",
            topic=TRAINING_FAILED,
            record=record,
            wait_trigger=drift_trigger if failure.error_type == "too_few_examples" else None,
            error_type=failure.error_type,
            error_reason=failure.reason,
            duration_s=time.perf_counter() - started,
        )
        await self.outbox.publish([record["event_id"]])
        log.warning("training_run_failed", run_id=run_id, error_type=failure.error_type, reason=failure.reason)
        if drift_trigger is not None:
            await self.revive_suppressed(drift_trigger)

    async def revive_suppressed(self, failed_trigger_id: str) -> None:
        """A failed drift run does not use up the cooldown: request a drift it suppressed."""

        def make_request(t: dict[str, Any]) -> tuple[str, dict[str, Any]]:
            # The request the drift event would have made had it not been suppressed.
            request_id = derived_event_id("drift-request", t["model_name"], t["episode_id"])
            return TRAINING_REQUESTED, self._trigger_request(t, request_id)

        decision = await self.store.revive_suppressed(failed_trigger_id, self.project.training.cooldown_s, make_request)
        if decision is not None and decision.request_event_id:
            await self.outbox.publish([decision.request_event_id])
            log.info(
                "drift_training_requested_after_failure",
                trigger_id=decision.trigger_id,
                failed_trigger_id=failed_trigger_id,
                request_id=decision.request_id,
            )

    async def _object_store(self, op: Callable[[], Awaitable[T]], what: str) -> T:
        """An object-store call, retried (by the store) for at most ``object_store_timeout_s``."""
        try:
            return await asyncio.wait_for(op(), self.object_store_timeout_s)
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

    async def run(self, event: Event, run_id: str, *, started: float | None = None, attempt: int = 1) -> RunOutcome:
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
        comparison = ChampionComparison()
        if champion is not None:
            comparison = await self._evaluate_champion(champion, result)
        timings["champion_s"] = time.perf_counter() - t

        t = time.perf_counter()
        model_sha = sha256_hex(result.model_bytes)
        artifact_key = model_key(model_name, run_id, model_sha)
        model_ref = await self._object_store(
            lambda: self.artifacts.put(artifact_key, result.model_bytes), "the model upload"
        )
        timings["upload_s"] = time.perf_counter() - t
        duration_s = time.perf_counter() - started
        champion_version = comparison.version if comparison.champion_metrics is not None else None
        metadata = {
            "run_id": run_id,
            "attempt": attempt,
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
            "champion_metrics": comparison.champion_metrics,
            "champion_evaluation_error": comparison.error,
            "comparison": comparison.describe(len(result.holdout)),
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
        metadata_bytes = json_bytes(metadata)
        meta_key = metadata_key(model_name, run_id, sha256_hex(metadata_bytes))
        metadata_ref = await self._object_store(
            lambda: self.artifacts.put(meta_key, metadata_bytes, "application/json"), "the metadata upload"
        )
        timings["upload_s"] += time.perf_counter() - t
        record = {
            **envelope(self.producer_name, cause=event, event_id=derived_event_id("model-trained", run_id)),
            "run_id": run_id,
            "model_name": model_name,
            "artifact_bucket": model_ref.bucket,
            "artifact_key": artifact_key,
            "artifact_sha256": model_ref.sha256,
            "metadata_key": meta_key,
            "metadata_sha256": metadata_ref.sha256,
            "metrics": result.metrics,
            "champion_metrics": comparison.champion_metrics,
            "champion_version": champion_version,
            "comparison_metrics": comparison.candidate_metrics,
            "n_comparison": comparison.n_examples if comparison.champion_metrics is not None else None,
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
            "champion_metrics": comparison.champion_metrics,
            "comparison_metrics": comparison.candidate_metrics,
            "n_comparison": record["n_comparison"],
            "n_train": len(result.train),
            "n_holdout": len(result.holdout),
            "dataset_fingerprint": result.dataset_fingerprint,
            "holdout_fingerprint": result.holdout_fingerprint,
            "artifact_key": artifact_key,
            "artifact_sha256": model_ref.sha256,
            "metadata_key": meta_key,
            "metadata_sha256": metadata_ref.sha256,
            "duration_s": duration_s,
        }
        return RunOutcome(record, fields, result, timings)

    async def _evaluate_champion(self, champion: Champion, result: FitResult) -> ChampionComparison:
        """The champion and the candidate on the same examples, or why the champion could not be evaluated.

        The examples are the holdout's part after the end of the champion's training data (from
        its metadata), so a champion is never scored on examples it was fitted on; when fewer
        than ``min_comparison_examples`` remain, there is no fair comparison and the run says
        so. Its artifact is verified (SHA-256) and loaded under the trusted-types list; a
        tampered or unsafe file is refused, and the run says so (the registry then cannot
        promote on a comparison that did not happen).
        """
        positive = self.project.label.positive_class
        comparison = ChampionComparison(version=champion.version, n_examples=len(result.holdout))
        try:
            comparison.train_end = await self._champion_train_end(champion)
            examples = pipeline.comparison_set(result.holdout, comparison.train_end)
            comparison.n_examples = len(examples)
            if len(examples) < self.min_comparison_examples:
                end = comparison.train_end.isoformat() if comparison.train_end else "?"
                raise _NoComparison(
                    f"only {len(examples)} of the {len(result.holdout)} holdout examples come after the end of "
                    f"champion v{champion.version}'s training data ({end}); a fair comparison needs at least "
                    f"{self.min_comparison_examples}"
                )
            data = await self._object_store(
                lambda: self.artifacts.get(champion.artifact_key, champion.artifact_sha256),
                f"the download of champion v{champion.version}",
            )
            model = await asyncio.to_thread(load_model, data)
            comparison.champion_metrics = await asyncio.to_thread(
                pipeline.evaluate_on_holdout, model, examples, champion.feature_names, positive
            )
            comparison.candidate_metrics = (
                dict(result.metrics)
                if len(examples) == len(result.holdout)
                else await asyncio.to_thread(
                    pipeline.evaluate_on_holdout, result.model, examples, result.feature_names, positive
                )
            )
            return comparison
        except TrainingFailure as failure:
            if failure.error_type == "object_store_unavailable":
                raise
            error = failure.reason
        except (ArtifactIntegrityError, ArtifactNotFound, UnsafeArtifactError, _NoComparison) as exc:
            error = str(exc)
        except Exception as exc:
            if is_transient(exc):
                raise
            error = f"champion v{champion.version} could not be evaluated: {exc!r}"[:1000]
        log.warning("champion_not_evaluated", champion_version=champion.version, error=error)
        comparison.champion_metrics = comparison.candidate_metrics = None
        comparison.error = error
        return comparison

    async def _champion_train_end(self, champion: Champion) -> datetime | None:
        """The end of the champion's training data, from its (verified) metadata; None if unrecorded."""
        if not champion.metadata_key or not champion.metadata_sha256:
            return None  # announced before promotions carried it to training: the whole holdout
        key, sha = champion.metadata_key, champion.metadata_sha256
        metadata = await self._object_store(
            lambda: self.artifacts.get_json(key, sha), f"the metadata of champion v{champion.version}"
        )
        end = (metadata.get("selection") or {}).get("train_end") if isinstance(metadata, dict) else None
        return as_utc(datetime.fromisoformat(end)) if isinstance(end, str) else None


class _NoComparison(Exception):
    """The champion cannot be compared fairly on this holdout."""


@dataclass
class ChampionComparison:
    """The champion against the candidate on the holdout examples the champion did not train on."""

    version: int | None = None
    train_end: datetime | None = None  # end of the champion's training data (None: unknown)
    n_examples: int = 0
    champion_metrics: dict[str, float] | None = None
    candidate_metrics: dict[str, float] | None = None
    error: str | None = None

    def describe(self, n_holdout: int) -> dict[str, Any] | None:
        if self.version is None:
            return None
        return {
            "champion_version": self.version,
            "champion_train_end": self.train_end.isoformat() if self.train_end else None,
            "n_examples": self.n_examples,
            "n_holdout_excluded": n_holdout - self.n_examples,
            "candidate_metrics": self.candidate_metrics,
            "champion_metrics": self.champion_metrics,
            "error": self.error,
        }
