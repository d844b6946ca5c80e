"""What deployment does: keep one champion (and optionally one challenger) per model in memory,
swap them when ``models.promoted`` says so, and score feature vectors with them.

Swapping: a new :class:`LoadedModel` is built completely off to the side (download, SHA-256
check, skops load under the trusted-types policy, a warm-up prediction) and only then does one
dictionary entry point at it. A request or a consumer batch takes its model reference once and
finishes on it, so nothing fails because of a swap. Nothing waits for one either: the skops load
is pure-Python work that holds the GIL for most of its duration (~0.3 s for 300 trees), and a
thread doing it makes every request on the event loop queue for the GIL (scikit-learn releases
and re-takes it once per tree), so :class:`ProcessLoader` loads in a child process and hands back
the loaded estimator. A model that fails any step is reported as ``failed`` on
``deployments.status`` and the one serving keeps serving.

Challenger: a new champion empties the challenger slot, whether the challenger is the version
promoted or is superseded by another one (it was shadowing the champion it was meant to beat);
the emptied slot is reported as ``unloaded``. A later ``shadow`` promotion fills it again.

Predicted class: for a binary model, the positive class when its score (probability) is at
least 0.5, the other class otherwise; for more classes, the most probable class.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import pickle
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import numpy as np
from prometheus_client import Counter, Gauge, Histogram

from driftline.artifacts import ArtifactStore
from driftline.catalog import DEPLOYMENTS_STATUS, PREDICTIONS
from driftline.events import Event, derived_event_id, now_utc
from driftline.kafka import EventProducer, PoisonRecord, is_transient
from driftline.logging import get_logger
from driftline_ml.models import load_model, positive_scores, to_matrix

log = get_logger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
ACTIONS = ("promote", "rollback", "shadow")

MODEL_LOADS = Counter("driftline_deployment_model_loads_total", "Model loads by outcome", ["slot", "status"])
MODEL_VERSION = Gauge("driftline_deployment_model_version", "Version loaded per model and slot", ["model", "slot"])
PREDICTIONS_MADE = Counter("driftline_deployment_predictions_total", "Predictions", ["source", "slot"])
UNSCORED = Counter("driftline_deployment_unscored_total", "Feature vectors received while no model was loaded")
SHADOW_ERRORS = Counter(
    "driftline_deployment_shadow_errors_total",
    "Consumer batches the challenger failed to score (the champion's predictions are unaffected)",
    ["model", "version"],
)
SCORE_SECONDS = Histogram(
    "driftline_deployment_score_seconds",
    "Time in the model per scoring call",
    ["source"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to score, and where it came from. Never mutated: a swap replaces it."""

    model_name: str
    version: int
    slot: str
    estimator: Any
    feature_names: tuple[str, ...]
    classes: tuple[str, ...]
    positive_class: str
    run_id: str
    artifact_sha256: str
    action: str
    reason: str
    actor: str
    promotion_event_id: str
    correlation_id: str
    metrics: Mapping[str, float]
    loaded_at: datetime
    load_seconds: float

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """Positive-class scores and predicted classes of the rows of ``x``."""
        scores = positive_scores(self.estimator, x, self.positive_class)
        if len(self.classes) == 2 and self.positive_class in self.classes:
            other = self.classes[1 - self.classes.index(self.positive_class)]
            return scores, [self.positive_class if s >= 0.5 else other for s in scores]
        return scores, [str(c) for c in self.estimator.predict(x)]

    def timed_predict(self, x: np.ndarray) -> tuple[np.ndarray, list[str], float]:
        """:meth:`predict` plus the seconds spent in it (measured where it runs, e.g. a worker thread)."""
        start = time.perf_counter()
        scores, classes = self.predict(x)
        return scores, classes, time.perf_counter() - start

    def describe(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "version": self.version,
            "slot": self.slot,
            "run_id": self.run_id,
            "artifact_sha256": self.artifact_sha256,
            "feature_names": list(self.feature_names),
            "classes": list(self.classes),
            "positive_class": self.positive_class,
            "loaded_since": self.loaded_at.isoformat(),
            "load_seconds": round(self.load_seconds, 4),
            "why": {
                "action": self.action,
                "reason": self.reason,
                "actor": self.actor,
                "promotion_event_id": self.promotion_event_id,
                "correlation_id": self.correlation_id,
            },
            "metrics": dict(self.metrics),
        }


class ModelSlots:
    """The models being served. Readers take a reference once; a swap is one assignment."""

    def __init__(self) -> None:
        self._champions: dict[str, LoadedModel] = {}
        self._challengers: dict[str, LoadedModel] = {}

    def champion(self, model_name: str) -> LoadedModel | None:
        return self._champions.get(model_name)

    def challenger(self, model_name: str) -> LoadedModel | None:
        return self._challengers.get(model_name)

    def install(self, model: LoadedModel) -> LoadedModel | None:
        """Put ``model`` in its slot. A new champion empties the challenger slot (the challenger
        was promoted, or it was shadowing a champion that is gone); the challenger removed, if any."""
        retired = None
        if model.slot == CHAMPION:
            self._champions[model.model_name] = model
            retired = self._challengers.pop(model.model_name, None)
            if retired is not None:
                MODEL_VERSION.remove(model.model_name, CHALLENGER)
        else:
            self._challengers[model.model_name] = model
        MODEL_VERSION.labels(model.model_name, model.slot).set(model.version)
        return retired

    def models(self) -> list[str]:
        return sorted(set(self._champions) | set(self._challengers))


@dataclass
class StartupPlan:
    """What to load for one model after replaying models.promoted: champions newest first, and
    the latest challenger (``shadow``), which serves only beside a champion promoted before it."""

    champions: list[Event] = field(default_factory=list)
    challenger: Event | None = None
    order: dict[str, int] = field(default_factory=dict)  # event id → position in models.promoted

    def challenger_beside(self, champion: Event | None) -> Event | None:
        """The challenger to load beside ``champion`` (the champion that loaded, None if none did):
        the same as live, where installing a champion empties the challenger slot."""
        challenger = self.challenger
        if challenger is None:
            return None
        if champion is None:
            return challenger
        if self.order[challenger.event_id] < self.order[champion.event_id]:
            return None  # superseded (or promoted) by this champion
        if challenger.value["version"] == champion.value["version"]:
            return None
        return challenger


def plan_from_history(history: Sequence[Event]) -> dict[str, StartupPlan]:
    """The latest champion (with earlier ones to fall back on) and challenger of every model."""
    plans: dict[str, StartupPlan] = {}
    for position, event in enumerate(history):
        value = event.value
        plan = plans.setdefault(value["model_name"], StartupPlan())
        plan.order[event.event_id] = position
        if value["action"] == "shadow":
            plan.challenger = event
        elif value["action"] in ("promote", "rollback"):
            plan.champions.append(event)
    for plan in plans.values():
        plan.champions.reverse()
    return plans


class LoadError(Exception):
    """The promoted model cannot serve (bad promotion, integrity, load or warm-up failure)."""


def _load_and_warm(data: bytes, feature_names: Sequence[str], positive_class: str) -> Any:
    """Blocking: skops load under the trusted-types policy, then one prediction on a zero row."""
    estimator = load_model(data)
    expected = getattr(estimator, "n_features_in_", None)
    if expected is not None and expected != len(feature_names):
        raise LoadError(f"the model expects {expected} features but the promotion names {len(feature_names)}")
    if not hasattr(estimator, "predict_proba"):
        raise LoadError(f"{type(estimator).__name__} has no predict_proba")
    positive_scores(estimator, np.zeros((1, len(feature_names))), positive_class)
    return estimator


class ModelLoader(Protocol):
    """Turns verified artifact bytes into a warmed-up estimator, off the event loop."""

    async def load(self, data: bytes, feature_names: Sequence[str], positive_class: str) -> Any: ...

    def close(self) -> None: ...


class ThreadLoader:
    """Loads in a worker thread of this process. Simple, but the load holds the GIL for most of
    its duration, so requests served meanwhile wait (see the module doc): for tests and tools."""

    async def load(self, data: bytes, feature_names: Sequence[str], positive_class: str) -> Any:
        return await asyncio.to_thread(_load_and_warm, data, feature_names, positive_class)

    def close(self) -> None:
        pass


def _loader_process_started(parent_pid: int) -> None:
    # The child's CPU time goes to loads, the parent's to requests: on a small host, serving wins.
    os.nice(19)

    def exit_with_the_parent() -> None:  # even a parent killed with SIGKILL leaves no child behind
        while os.getppid() == parent_pid:
            time.sleep(1)
        os._exit(0)

    threading.Thread(target=exit_with_the_parent, name="loader-parent-watch", daemon=True).start()


def _load_in_child(data: bytes, feature_names: Sequence[str], positive_class: str) -> bytes:
    """In the loader process: the trusted-types load and the warm-up; the estimator, pickled.

    The pickle never touches the object store: it is made here, from an estimator that skops
    built from trusted types only, and read once by the parent over the pool's pipe.
    """
    return pickle.dumps(_load_and_warm(data, feature_names, positive_class), protocol=pickle.HIGHEST_PROTOCOL)


def _unpickle_and_warm(blob: bytes, n_features: int, positive_class: str) -> Any:
    estimator = pickle.loads(blob)  # noqa: S301 - made by our loader process (see _load_in_child)
    positive_scores(estimator, np.zeros((1, n_features)), positive_class)  # first-call costs, not on a request
    return estimator


class ProcessLoader:
    """Loads in one long-lived child process (spawned: the service has threads), so the skops load
    competes with serving for a CPU core, never for the GIL. Receiving the estimator costs the
    parent a few milliseconds of unpickling in a thread. A child that dies (a crash on a hostile
    file) fails that load only; the next load starts a new child."""

    def __init__(self) -> None:
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_loader_process_started,
                initargs=(os.getpid(),),
            )
        return self._pool

    def start(self) -> None:
        """Start the child now (imports take seconds), rather than at the first promotion."""
        self._executor().submit(os.getpid)

    async def load(self, data: bytes, feature_names: Sequence[str], positive_class: str) -> Any:
        pool = self._executor()
        try:
            blob = await asyncio.get_running_loop().run_in_executor(
                pool, _load_in_child, data, tuple(feature_names), positive_class
            )
        except BrokenProcessPool as exc:
            self._pool = None
            pool.shutdown(wait=False, cancel_futures=True)
            raise LoadError(f"the model loader process died while loading this model ({exc})") from exc
        return await asyncio.to_thread(_unpickle_and_warm, blob, len(feature_names), positive_class)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


class Deployer:
    """Applies models.promoted: loads, verifies, warms up, swaps, and reports on deployments.status."""

    def __init__(
        self,
        *,
        slots: ModelSlots,
        producer: EventProducer,
        artifacts: Callable[[str], ArtifactStore],
        instance_id: str,
        default_positive_class: str,
        shadow: bool = True,
        fallback_depth: int = 5,
        loader: ModelLoader | None = None,
    ) -> None:
        self.slots = slots
        self.producer = producer
        self.artifacts = artifacts
        self.instance_id = instance_id
        self.default_positive_class = default_positive_class
        self.shadow = shadow
        self.fallback_depth = fallback_depth
        self.loader: ModelLoader = loader or ThreadLoader()
        self.history: deque[dict[str, Any]] = deque(maxlen=50)  # recent status changes, newest last
        self.replayed = False

    async def on_replayed(self, history: list[Event]) -> None:
        """Start-up: load the latest champion (earlier ones if it fails) and challenger per model."""
        for model_name, plan in plan_from_history(history).items():
            serving = None
            for event in plan.champions[: self.fallback_depth]:
                if await self.apply(event, startup=True):
                    serving = event
                    break
            else:
                if plan.champions:
                    log.error(
                        "no_champion_loadable", model=model_name, tried=min(len(plan.champions), self.fallback_depth)
                    )
            challenger = plan.challenger_beside(serving)
            if challenger is not None:
                await self.apply(challenger, startup=True)
        self.replayed = True

    async def on_event(self, event: Event) -> None:
        await self.apply(event)

    async def apply(self, event: Event, *, startup: bool = False) -> bool:
        """Carry out one promotion; True when the model now serves in its slot."""
        value = event.value
        action = value.get("action")
        slot = CHALLENGER if action == "shadow" else CHAMPION
        if action not in ACTIONS:
            await self._report(event, slot, "failed", f"unknown action {action!r} (expected one of {ACTIONS})", None)
            return False
        if slot == CHALLENGER and not self.shadow:
            log.info("shadow_disabled_ignoring", model=value["model_name"], version=value["version"])
            return False
        start = time.perf_counter()
        try:
            model = await self._load(event, slot)
        except Exception as exc:
            if is_transient(exc):
                raise  # an outage: the caller retries; the serving model is untouched
            MODEL_LOADS.labels(slot, "failed").inc()
            reason = f"{type(exc).__name__}: {exc}"
            log.error("model_load_failed", model=value["model_name"], version=value["version"], reason=reason[:500])
            await self._report(event, slot, "failed", reason, time.perf_counter() - start)
            return False
        retired = self.slots.install(model)
        status = "rolled_back" if action == "rollback" else "loaded"
        MODEL_LOADS.labels(slot, status).inc()
        why = "rebuilt from models.promoted at start-up; " if startup else ""
        log.info("model_swapped", model=model.model_name, version=model.version, slot=slot, seconds=model.load_seconds)
        await self._report(
            event, slot, status, f"{why}{action} v{model.version}: {value['reason']}", model.load_seconds
        )
        if retired is not None:
            became = "became the champion" if retired.version == model.version else "was superseded"
            log.info("challenger_unloaded", model=model.model_name, version=retired.version, champion=model.version)
            await self._report(
                event,
                CHALLENGER,
                "unloaded",
                f"challenger v{retired.version} {became}: {action} v{model.version} to champion",
                None,
                version=retired.version,
            )
        return True

    async def _load(self, event: Event, slot: str) -> LoadedModel:
        value = event.value
        start = time.perf_counter()
        store = self.artifacts(value["artifact_bucket"])
        data = await store.get(value["artifact_key"], value["artifact_sha256"])
        metadata = await store.get_json(value["metadata_key"], value["metadata_sha256"])
        feature_names = tuple(value["feature_names"]) or tuple(metadata.get("feature_names") or ())
        if not feature_names:
            raise LoadError("the promotion names no features")
        positive = str(metadata.get("positive_class") or self.default_positive_class)
        estimator = await self.loader.load(data, feature_names, positive)
        return LoadedModel(
            model_name=value["model_name"],
            version=int(value["version"]),
            slot=slot,
            estimator=estimator,
            feature_names=feature_names,
            classes=tuple(str(c) for c in getattr(estimator, "classes_", metadata.get("classes") or ())),
            positive_class=positive,
            run_id=value["run_id"],
            artifact_sha256=value["artifact_sha256"],
            action=value["action"],
            reason=value["reason"],
            actor=value["actor"],
            promotion_event_id=event.event_id,
            correlation_id=event.correlation_id,
            metrics=dict(value.get("metrics") or {}),
            loaded_at=now_utc(),
            load_seconds=time.perf_counter() - start,
        )

    async def _report(
        self, event: Event, slot: str, status: str, reason: str, seconds: float | None, *, version: int | None = None
    ) -> None:
        """One deployments.status record caused by ``event``, about its version (or ``version``)."""
        value = event.value
        record = {
            **self.producer.envelope(
                cause=event,
                event_id=derived_event_id("deployment-status", event.event_id, self.instance_id, slot, status),
            ),
            "model_name": value["model_name"],
            "version": int(value["version"]) if version is None else version,
            "slot": slot,
            "status": status,
            "reason": reason[:2000],
            "instance_id": self.instance_id,
            "load_seconds": seconds,
        }
        self.history.append(
            {
                "at": record["produced_at"].isoformat(),
                "model_name": record["model_name"],
                "version": record["version"],
                "slot": slot,
                "status": status,
                "reason": record["reason"],
                "promotion_event_id": event.event_id,
            }
        )
        await self.producer.publish(DEPLOYMENTS_STATUS, record)


class Scorer:
    """Stream scoring of features.vectors: one predict call per consumer batch and model."""

    def __init__(self, *, slots: ModelSlots, producer: EventProducer, model_name: str, shadow: bool = True) -> None:
        self.slots = slots
        self.producer = producer
        self.model_name = model_name
        self.shadow = shadow

    async def score_batch(self, events: list[Event]) -> None:
        """Batch handler: a row the champion cannot score fails the batch (the runner then isolates
        it). The challenger is scored after the champion's predictions are sent, and nothing it
        does (an error in its input conversion or its predict) reaches the champion's path: it is
        counted (``driftline_deployment_shadow_errors_total``), logged, and its batch is skipped."""
        champion = self.slots.champion(self.model_name)
        if champion is None:
            UNSCORED.inc(len(events))
            log.debug("no_model_loaded_vectors_unscored", count=len(events))
            return
        challenger = self.slots.challenger(self.model_name) if self.shadow else None
        features = [e.value["features"] for e in events]
        x = to_matrix(features, champion.feature_names)  # every row valid before anything is sent
        await self._score(events, champion, await asyncio.to_thread(champion.timed_predict, x))
        if challenger is None:
            return
        try:
            shadow_x = to_matrix(features, challenger.feature_names)
            result = await asyncio.to_thread(challenger.timed_predict, shadow_x)
            if not len(result[0]) == len(result[1]) == len(events):
                raise ValueError(f"{len(result[0])} scores for {len(events)} vectors")
        except Exception as exc:
            SHADOW_ERRORS.labels(challenger.model_name, str(challenger.version)).inc()
            log.warning(
                "shadow_scoring_failed",
                model=challenger.model_name,
                version=challenger.version,
                records=len(events),
                error=f"{type(exc).__name__}: {exc}"[:500],
            )
            return
        await self._score(events, challenger, result)

    async def _score(
        self, events: list[Event], model: LoadedModel, result: tuple[np.ndarray, list[str], float]
    ) -> None:
        scores, classes, seconds = result
        SCORE_SECONDS.labels("stream").observe(seconds)
        per_record_ms = seconds * 1000 / len(events)
        for event, score, predicted in zip(events, scores, classes, strict=True):
            await self.producer.send(PREDICTIONS, self._record(event, model, float(score), predicted, per_record_ms))
        PREDICTIONS_MADE.labels("stream", model.slot).inc(len(events))

    async def score_one(self, event: Event) -> None:
        """Per-record handler (used to isolate a bad record): invalid vectors go to the DLQ."""
        try:
            await self.score_batch([event])
        except ValueError as exc:
            raise PoisonRecord(f"feature vector cannot be scored: {exc}", "validation_error") from exc

    def _record(
        self, event: Event, model: LoadedModel, score: float, predicted: str, latency_ms: float
    ) -> dict[str, Any]:
        value = event.value
        return {
            **self.producer.envelope(
                cause=event,
                event_time=value["event_time"],
                event_id=derived_event_id(value["source_event_id"], model.model_name, model.version, model.slot),
            ),
            "source_event_id": value["source_event_id"],
            "entity_id": value["entity_id"],
            "model_name": model.model_name,
            "model_version": model.version,
            "slot": model.slot,
            "shadow": model.slot == CHALLENGER,
            "score": score,
            "predicted_class": predicted,
            "scoring_latency_ms": latency_ms,
        }
