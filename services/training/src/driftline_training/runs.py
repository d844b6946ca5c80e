"""A training run: select, split by time, fit, compare with the champion, store, announce.

``run_id`` derives from the request id, so a re-delivered request finds its run instead of
fitting again. A run is bounded by ``max_run_seconds`` (retries included; a fit in progress
cannot be interrupted, it finishes in the background and its result is dropped); an object-store
outage is retried with new attempts after a pause that doubles, at most ``run_attempts`` in all.
Its outcome is stored with the event that announces it (outbox): ``models.trained`` or
``training.failed``. A failing run never blocks the consumer; an outage of PostgreSQL is left
to the consumer to retry, and the run restarts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from driftline import jsonsafe
from driftline.artifacts import ArtifactRef, json_bytes, sha256_hex
from driftline.catalog import MODELS_TRAINED, TRAINING_FAILED
from driftline.events import as_utc, derived_event_id, envelope, now_utc
from driftline.logging import get_logger
from driftline.outbox import Outbox
from driftline.project import Project, TrainingPolicy
from driftline.records import ModelTrained, TrainingFailed, TrainingRequested
from driftline.retry import is_transient
from driftline_ml.trainingset import CONTENT_TYPE as TRAINING_SET_CONTENT_TYPE
from driftline_training import pipeline
from driftline_training.artifacts import RunArtifacts, metadata_key, model_key, training_set_key
from driftline_training.champion import ChampionComparison, ChampionEvaluator
from driftline_training.pipeline import RETRIED_IN_PLACE, Example, FitResult, TrainingFailure
from driftline_training.provenance import code_version, library_versions
from driftline_training.requests import is_refresh, run_id_of, trigger_of
from driftline_training.store import TrainingStore
from driftline_training.trigger_policy import drift_trigger_id
from driftline_training.triggers import Triggers
from driftline_training.window import WindowChoice, fit_choosing_window

log = get_logger(__name__)


@dataclass
class RunOutcome:
    """What a successful run produced (before it is announced)."""

    record: ModelTrained
    result: FitResult
    timings: dict[str, float]


@dataclass
class TrainedModel:
    """A fitted, compared and stored model: what its metadata and its announcement say."""

    request: TrainingRequested
    run_id: str
    attempt: int
    policy: TrainingPolicy
    since: datetime | None
    window: WindowChoice | None  # a drift run's choice of training window (None: no choice)
    result: FitResult
    comparison: ChampionComparison
    model: ArtifactRef
    training_set: ArtifactRef
    labels_as_of: datetime
    duration_s: float
    timings: dict[str, float]


def retry_delay(
    failure: TrainingFailure, tries: int, *, run_attempts: int, backoff_s: float, time_left: float
) -> float | None:
    """The pause before another attempt of the same run, or None: the failure is final."""
    delay = backoff_s * 2.0 ** (tries - 1)
    if failure.error_type in RETRIED_IN_PLACE and tries < run_attempts and delay < time_left:
        return delay
    return None


@contextmanager
def _timed(timings: dict[str, float], key: str) -> Iterator[None]:
    """Adds the block's duration to ``timings[key]``."""
    t = time.perf_counter()
    yield
    timings[key] = timings.get(key, 0.0) + time.perf_counter() - t


def _param_text(value: Any) -> str:
    return value if isinstance(value, str) else jsonsafe.dumps(value, sort_keys=True, default=str)


@dataclass
class Runs:
    project: Project
    store: TrainingStore
    artifacts: RunArtifacts
    champions: ChampionEvaluator
    triggers: Triggers
    outbox: Outbox
    producer_name: str
    max_run_seconds: float = 1800.0
    run_attempts: int = 3
    retry_backoff_s: float = 15.0
    feature_set_version: str = ""  # the vectors' (the projects topic's); default: the file's features.version

    def __post_init__(self) -> None:
        self.feature_set_version = self.feature_set_version or self.project.features.version

    async def handle(self, request: TrainingRequested) -> None:
        """Run a training request once; a failing run becomes training.failed, never a stuck consumer."""
        run_id = run_id_of(request.request_id)
        if await self._handled_before(run_id):
            return
        started = time.perf_counter()
        deadline = started + self.max_run_seconds
        tries = 0
        while True:
            tries += 1
            attempt = await self.store.start_run(run_id, request)
            log.info(
                "training_run_started",
                run_id=run_id,
                request_id=request.request_id,
                reason=request.reason,
                attempt=attempt,
            )
            result = await self._attempt(request, run_id, started=started, deadline=deadline, attempt=attempt)
            if isinstance(result, RunOutcome):
                await self._succeed(run_id, result)
                return
            delay = retry_delay(
                result,
                tries,
                run_attempts=self.run_attempts,
                backoff_s=self.retry_backoff_s,
                time_left=deadline - time.perf_counter(),
            )
            if delay is None:
                await self._fail(request, run_id, _after_tries(result, tries), started)
                return
            log.warning(
                "training_run_retrying",
                run_id=run_id,
                error_type=result.error_type,
                reason=result.reason,
                attempt=tries,
                retry_in_s=delay,
            )
            await asyncio.sleep(delay)

    async def _handled_before(self, run_id: str) -> bool:
        """A finished run only makes sure its announcement went out (a crash may have cut it off)."""
        existing = await self.store.get_run(run_id)
        if existing is None or existing["status"] == "running":
            return False  # new, or left running by a crash: run (again)
        await self.outbox.publish([existing["result_event_id"]])
        log.info("training_run_already_handled", run_id=run_id, status=existing["status"])
        return True

    async def _attempt(
        self, request: TrainingRequested, run_id: str, *, started: float, deadline: float, attempt: int
    ) -> RunOutcome | TrainingFailure:
        """One attempt of a run, within the run's deadline: its outcome, or why it failed."""
        try:
            async with asyncio.timeout(max(0.0, deadline - time.perf_counter())) as budget:
                return await self.run(request, run_id, started=started, attempt=attempt)
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

    # -- the run's steps ---------------------------------------------------------------------

    async def run(
        self, request: TrainingRequested, run_id: str, *, started: float | None = None, attempt: int = 1
    ) -> RunOutcome:
        """One training run, up to the stored artifacts; returns the ModelTrained record to announce."""
        started = time.perf_counter() if started is None else started
        policy = self._policy(request)
        timings: dict[str, float] = {}
        # Labels as of the run's start: a correction recorded after it is left to the next run.
        labels_as_of = await self.store.clock()
        with _timed(timings, "select_s"):
            examples, since = await self._select(request, policy, labels_as_of)
        _check_enough(examples, policy, since)
        result, window = await asyncio.to_thread(fit_choosing_window, self.project, examples, since, policy)
        timings.update(result.timings)
        with _timed(timings, "champion_s"):
            champion = await self.store.get_champion(request.model_name)
            # A refresh is a drift run too: compared on the most recent part of the holdout.
            drift_run = since is not None or is_refresh(request)
            comparison = await self.champions.compare(champion, result, drift_run=drift_run)
        with _timed(timings, "upload_s"):
            model_ref = await self._store_model(request.model_name, run_id, result)
            training_set_ref = await self.artifacts.put(
                training_set_key(request.model_name, run_id, result.dataset_fingerprint),
                result.training_set,
                "the training-set upload",
                TRAINING_SET_CONTENT_TYPE,
            )
        trained = TrainedModel(
            request=request,
            run_id=run_id,
            attempt=attempt,
            policy=policy,
            since=since,
            window=window,
            result=result,
            comparison=comparison,
            model=model_ref,
            training_set=training_set_ref,
            labels_as_of=labels_as_of,
            duration_s=time.perf_counter() - started,
            timings=timings,
        )
        with _timed(timings, "upload_s"):
            metadata_ref = await self._store_metadata(trained)
        return RunOutcome(self._announcement(trained, metadata_ref), result, timings)

    def _policy(self, request: TrainingRequested) -> TrainingPolicy:
        """The project's training policy with the request's overrides."""
        if request.model_name != self.project.model.name:
            raise TrainingFailure("unknown_model", f"model {request.model_name!r} is not this project's model")
        return pipeline.effective_policy(self.project.training, request.parameters)

    async def _select(
        self, request: TrainingRequested, policy: TrainingPolicy, labels_as_of: datetime
    ) -> tuple[list[Example], datetime | None]:
        """Examples for a run: the most recent ``max_examples``, each with its latest label recorded
        by ``labels_as_of``; for since_drift also the drift onset, so that the run chooses between
        the examples after it and all of them (:mod:`driftline_training.window`)."""
        since = None
        if policy.selection == "since_drift" and request.since is not None:
            since = as_utc(request.since)
        examples = await self.store.select_examples(
            self.feature_set_version,
            self.project.label.classes,
            since=None,
            limit=policy.max_examples,
            project=self.project.name,
            labels_as_of=labels_as_of,
        )
        return examples, since

    async def _store_model(self, model_name: str, run_id: str, result: FitResult) -> ArtifactRef:
        key = model_key(model_name, run_id, sha256_hex(result.model_bytes))
        return await self.artifacts.put(key, result.model_bytes, "the model upload")

    async def _store_metadata(self, trained: TrainedModel) -> ArtifactRef:
        data = json_bytes(self._metadata(trained))
        key = metadata_key(trained.request.model_name, trained.run_id, sha256_hex(data))
        return await self.artifacts.put(key, data, "the metadata upload", "application/json")

    def _metadata(self, t: TrainedModel) -> dict[str, Any]:
        """The run's metadata document: how to reproduce, judge and monitor the model."""
        project, result, comparison, request = self.project, t.result, t.comparison, t.request
        return {
            "run_id": t.run_id,
            "attempt": t.attempt,
            "model_name": request.model_name,
            "created_at": now_utc().isoformat(),
            "estimator": project.model.estimator,
            # The estimator as built (the project's parameters; the seed below fills random_state).
            "estimator_spec": {"estimator": project.model.estimator, "params": dict(project.model.params)},
            "params": result.params,
            "seed": result.seed,
            "refit": result.refit,
            "feature_names": result.feature_names,
            "feature_set_version": self.feature_set_version,
            "classes": result.classes,
            "positive_class": project.label.positive_class,
            "metrics": result.metrics,
            "champion_version": comparison.compared_version,
            "champion_metrics": comparison.champion_metrics,
            "champion_evaluation_error": comparison.error,
            "comparison": comparison.describe(len(result.holdout)),
            "dataset_fingerprint": result.dataset_fingerprint,
            "holdout_fingerprint": result.holdout_fingerprint,
            "training_set": {
                "bucket": t.training_set.bucket,
                "key": t.training_set.key,
                "sha256": t.training_set.sha256,
                "size": t.training_set.size,
                "format": "parquet",
                "rows": len(result.train) + len(result.holdout),
                "labels_as_of": t.labels_as_of.isoformat(),
            },
            "n_train": len(result.train),
            "n_holdout": len(result.holdout),
            "label_counts": result.label_counts,
            "selection": {
                "policy": t.policy.selection,
                "since": t.since.isoformat() if t.since else None,
                "window": t.window.as_dict() if t.window else None,
                "max_examples": t.policy.max_examples,
                "holdout_fraction": t.policy.holdout_fraction,
                **result.time_ranges(),
            },
            "library_versions": library_versions(),
            "code_version": code_version(),
            "duration_s": t.duration_s,
            "fit_seconds": result.fit_seconds,
            "timings": t.timings,
            "trigger": trigger_of(request),
            "reason": request.reason,
            "refresh": is_refresh(request),
            "requested_by": request.requested_by,
            "drift_episode_id": request.drift_episode_id,
            "training_request_id": request.request_id,
            "correlation_id": request.correlation_id,
            "artifact_bucket": t.model.bucket,
            "artifact_key": t.model.key,
            "artifact_sha256": t.model.sha256,
            "artifact_size": t.model.size,
            "reference_profile": result.reference_profile,
        }

    def _announcement(self, t: TrainedModel, metadata: ArtifactRef) -> ModelTrained:
        """The models.trained record; its event id derives from the run id."""
        result, comparison, request = t.result, t.comparison, t.request
        return ModelTrained(
            **envelope(self.producer_name, cause=request, event_id=derived_event_id("model-trained", t.run_id)),
            run_id=t.run_id,
            model_name=request.model_name,
            artifact_bucket=t.model.bucket,
            artifact_key=t.model.key,
            artifact_sha256=t.model.sha256,
            metadata_key=metadata.key,
            metadata_sha256=metadata.sha256,
            metrics=result.metrics,
            champion_metrics=comparison.champion_metrics,
            champion_version=comparison.compared_version,
            comparison_metrics=comparison.candidate_metrics,
            n_comparison=comparison.n_compared,
            comparison_wins=comparison.wins,
            comparison_losses=comparison.losses,
            dataset_fingerprint=result.dataset_fingerprint,
            holdout_fingerprint=result.holdout_fingerprint,
            training_set_key=t.training_set.key,
            training_set_sha256=t.training_set.sha256,
            training_set_size=t.training_set.size,
            labels_as_of=t.labels_as_of,
            train_start=result.train[0].event_time,
            holdout_end=result.holdout[-1].event_time,
            code_version=code_version(),
            feature_set_version=self.feature_set_version,
            feature_names=tuple(result.feature_names),
            params={k: _param_text(p) for k, p in result.params.items()},
            n_train=len(result.train),
            n_holdout=len(result.holdout),
            duration_s=t.duration_s,
            trigger=trigger_of(request),
            drift_episode_id=request.drift_episode_id,
            training_request_id=request.request_id,
            refresh=is_refresh(request),
        )

    # -- outcomes ----------------------------------------------------------------------------

    async def _succeed(self, run_id: str, outcome: RunOutcome) -> None:
        record = outcome.record
        async with self.store.transaction() as tx:
            if await tx.finish_run(run_id, record, duration_s=record.duration_s):
                await tx.stage(MODELS_TRAINED, record)
        await self.outbox.publish([record.event_id])
        log.info(
            "training_run_succeeded",
            run_id=run_id,
            metrics=record.metrics,
            champion_version=record.champion_version,
            champion_metrics=record.champion_metrics,
            duration_s=round(record.duration_s, 3),
        )

    async def _fail(self, request: TrainingRequested, run_id: str, failure: TrainingFailure, started: float) -> None:
        record = TrainingFailed(
            **envelope(self.producer_name, cause=request, event_id=derived_event_id("training-failed", run_id)),
            run_id=run_id,
            model_name=request.model_name,
            reason=failure.reason,
            error_type=failure.error_type,
            training_request_id=request.request_id,
            drift_episode_id=request.drift_episode_id,
            retryable=failure.retryable,
        )
        drift_trigger = None
        if request.reason == "drift" and request.drift_episode_id:
            drift_trigger = drift_trigger_id(request.model_name, request.drift_episode_id)
        async with self.store.transaction() as tx:
            if await tx.finish_run(run_id, record, duration_s=time.perf_counter() - started):
                await tx.stage(TRAINING_FAILED, record)
                if drift_trigger is not None:
                    await self.triggers.after_failed_run(tx, drift_trigger, failure.error_type)
        await self.outbox.publish([record.event_id])
        log.warning("training_run_failed", run_id=run_id, error_type=failure.error_type, reason=failure.reason)
        if drift_trigger is not None:
            await self.triggers.revive_suppressed(drift_trigger)


def _check_enough(examples: list[Example], policy: TrainingPolicy, since: datetime | None) -> None:
    n = len(examples) if since is None else sum(e.event_time >= since for e in examples)
    if n < policy.min_examples:
        where = f" at or after {since.isoformat()} (drift onset)" if since else ""
        raise TrainingFailure(
            "too_few_examples",
            f"{n} labelled examples{where}, the policy needs at least {policy.min_examples}",
            retryable=True,
        )


def _after_tries(failure: TrainingFailure, tries: int) -> TrainingFailure:
    """The final failure, saying how many attempts it took when it was retried in place."""
    if failure.error_type in RETRIED_IN_PLACE and tries > 1:
        return TrainingFailure(
            failure.error_type, f"{failure.reason} (after {tries} attempts)", retryable=failure.retryable
        )
    return failure
