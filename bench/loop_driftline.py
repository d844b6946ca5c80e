"""The ``driftline`` column of bench/loop.py: the platform's own decision code, in-process.

* the project: the shipped example's file (``examples/loan_approval/project.yaml``) for the loan
  family; for any other family the same file with the stream's features as numeric raw features
  and its label classes (:func:`project_for`), so every family runs the shipped policies, untuned;
* monitoring: a ``driftline_monitoring.drift.ModelMonitor`` per serving version, built from the
  ``Reference`` of the promoted model's metadata (reference profile, holdout accuracy, feature
  names, examples, the episode whose request trained it) that ``pipeline.fit`` produced; vectors,
  champion predictions (with the positive-class score) and delayed labels are fed as the handlers
  do (labels that arrive before their prediction wait, as in ``Monitoring.labels``); checks run
  ``snapshot``/``compute``/``conclude``; a detection opens an episode only when none is open
  (``should_open``, ``with_onset``, ``open``); after every joined outcome ``due_attempt`` may ask
  again (still degraded, consolidation), as ``Episodes.maybe_attempt``, once the last attempt's run
  reported (a rejected candidate or a failed run: ``Episode.outcome``, as ``Monitoring.on_run_outcome``;
  a promotion: ``carry``); ``after_check`` ends the episode; a new model gets a new monitor that
  inherits the open episode (``carry``).
* training: ``trigger_policy.decide`` on each published ``drift.detected`` (the cooldown between
  episodes, waiting for ``min_examples`` labels since the onset: a waiting trigger is requested
  once they exist; further attempts of an episode are not held by the cooldown); the first model
  as the baselines' (the project's ``initial_training_after`` is 0, i.e. no automatic first
  model); the run selects the most recent ``max_examples`` labelled events since the onset
  (``since_drift``) and ``pipeline.fit`` splits by time, fits the project's estimator, profiles;
  the champion is scored on ``pipeline.comparison_set`` (as ``ChampionEvaluator``) with
  ``pipeline.evaluate_on_holdout``.
* registry: ``driftline_registry.policy.decide`` with the project's promotion policy.

Left out (I/O): Kafka, the stores, artifacts, de-duplication of re-delivered events (every
detection here is delivered once), revival/waits_again (runs fail only for too few examples /
one class, and a failed run does not retry), and the time a run takes. Event time is
``START + t / events_per_second`` s: a cooldown given as a duration maps to
``seconds * events_per_second`` events, one given in events or labels is counted on the stream.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from bench.loop import Labelled, LoopConfig, Model, Retrain, StreamInfo
from driftline.events import epoch_ms
from driftline.project import Project, load_project
from driftline_ml.models import positive_scores
from driftline_monitoring.drift import Detection, ModelMonitor, Reference
from driftline_monitoring.lifecycle import REFRESH, Attempt
from driftline_registry import policy as registry_policy
from driftline_training import pipeline, trigger_policy
from driftline_training.pipeline import Example, TrainingFailure
from driftline_training.window import fit_choosing_window

START = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
EVENTS_PER_SECOND = 300.0
MIN_COMPARISON_EXAMPLES = 50  # ChampionEvaluator's default


class _Coded:
    """A fitted model answering label codes (the simulator's) instead of class names."""

    def __init__(self, model: Any, classes: tuple[Any, ...]) -> None:
        self.model = model
        self.code = {str(c): k for k, c in enumerate(classes)}

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray([self.code[str(v)] for v in self.model.predict(x)], dtype=np.int64)


def project_for(info: StreamInfo, base: Project | None = None) -> Project:
    """The shipped project for the loan family; for another family, the same file with the stream's
    features (numeric, raw) and label classes: the same policies, the stream's data."""
    base = base or load_project()
    if list(info.feature_names) == list(base.model_features):
        return base
    doc = base.model_dump(exclude={"path"}, by_alias=True)
    names = [str(f) for f in info.feature_names]
    doc["features"] = {"version": "1", "raw": names, "categorical": [], "derived": [], "windows": []}
    doc["model"]["features"] = names
    classes = [str(c) for c in info.classes]
    doc["label"] = {"name": "label", "classes": classes, "positive_class": classes[-1]}
    return Project.model_validate(doc)


class Driftline:
    name = "driftline"
    observes = True
    detects = True

    def __init__(
        self, trainer: Any = None, events_per_second: float = EVENTS_PER_SECOND, project: str | None = None
    ) -> None:
        self.events_per_second = events_per_second
        self.project_file = project
        self.detections: list[int] = []

    # -- time ------------------------------------------------------------------------------------

    def _time(self, t: int) -> datetime:
        return START + timedelta(seconds=t / self.events_per_second)

    def _event(self, ms: int) -> int:
        return round((ms - self._start_ms) * self.events_per_second / 1000)

    def start(self, info: StreamInfo, config: LoopConfig) -> None:
        self.info, self.config = info, config
        self.project = project_for(info, load_project(self.project_file) if self.project_file else None)
        self.names = list(self.project.model_features)
        self.positive = self.project.label.positive_class
        self._start_ms = epoch_ms(START)
        self.detections = []
        self.version = 0
        self.monitor: ModelMonitor | None = None
        self.champion: Any = None
        self.champion_train_end: datetime | None = None
        self.buffer: list[tuple[int, np.ndarray, int]] = []
        self.waiting_labels: dict[str, str] = {}
        self.last_request: datetime | None = None  # nearest live request (the cooldown)
        self.last_request_at = 0  # its position in the stream
        # Published detections not yet decided, with their onset (None: a refresh, no onset).
        self.asks: list[tuple[trigger_policy.Ask, int | None]] = []
        self.waiting: tuple[trigger_policy.Ask, int | None] | None = None  # requested, waiting for labels
        self.decisions: list[str] = []
        self.requesting_episode: str | None = None  # the episode whose request the next run serves
        self.run_since: int | None = None  # the next drift run's onset (its window choice)
        self.run_refresh = False  # the next run is a refresh (no onset, ModelTrained.refresh)
        self.detected_by: list[str] = []  # kind/method of each published detection
        self.attempts: list[tuple[int, int, str]] = []  # (t, attempt, reason) of further attempts

    # -- monitoring ------------------------------------------------------------------------------

    def observe(self, t: int, x: np.ndarray, prediction: int) -> None:
        self.buffer.append((t, x, prediction))
        if len(self.buffer) >= min(self.project.drift.check_every, self.config.label_delay):
            self._flush()

    def _flush(self) -> None:
        if not self.buffer or self.monitor is None or self.champion is None:
            self.buffer = []
            return
        xs = np.vstack([x for _, x, _ in self.buffer])
        scores = positive_scores(self.champion, xs, self.positive)
        monitor = self.monitor
        for (t, x, prediction), score in zip(self.buffer, scores, strict=True):
            ms = epoch_ms(self._time(t))
            event_id = str(t)
            if monitor.add_vector(ms, dict(zip(self.names, x.tolist(), strict=True))):
                self._check(t)
            predicted = str(self.info.classes[prediction]) if prediction >= 0 else None
            monitor.add_prediction(event_id, ms, float(score), predicted)
            label = self.waiting_labels.pop(event_id, None)
            if label is not None:
                self._outcome(t - self.config.label_delay, monitor.add_label(event_id, label))
        self.buffer = []

    def _check(self, t: int) -> None:
        assert self.monitor is not None
        columns, scores, window = self.monitor.snapshot()
        result = self.monitor.conclude(self.monitor.compute(columns, scores, window))
        if result.detection is not None:
            # An input alarm needs no label: it is counted at the last event it saw, t.
            self._detected(t - self.config.label_delay, result.detection, seen=t)
        ended = self.monitor.after_check(result)
        if ended is not None:
            self.decisions.append(f"{t}: episode {ended[0].episode_id[:8]} ended: {ended[1]}")

    def _outcome(self, labelled_event: int, detection: Detection | None) -> None:
        """A joined outcome, as ``Monitoring._performance``: its detection, then a further attempt."""
        self._detected(labelled_event, detection)
        monitor = self.monitor
        if monitor is None or monitor.episode is None:
            return
        attempt = monitor.due_attempt()
        if attempt is not None:
            monitor.episode.took(attempt)
            self._ask(labelled_event, monitor.episode.episode_id, attempt)

    def _ask(self, labelled_event: int, episode_id: str, attempt: Attempt) -> None:
        now = self._time(labelled_event + self.config.label_delay)
        # A refresh has no onset (training: the whole recent selection); another attempt without
        # one trains since the window start, here the stream's start.
        onset: int | None = None if attempt.reason == REFRESH else 0
        if attempt.onset_ms is not None:
            onset = max(0, self._event(attempt.onset_ms))
        self.attempts.append((labelled_event + self.config.label_delay, attempt.number, attempt.reason))
        ask = trigger_policy.Ask(
            trigger_id=trigger_policy.drift_trigger_id(self.project.model.name, episode_id, attempt.number),
            kind="drift",
            model_name=self.project.model.name,
            event_time=now,
            episode_id=episode_id,
            since=self._time(onset) if onset is not None else None,
            episode_attempt=attempt.number,
        )
        self.asks.append((ask, onset))

    def _detected(self, labelled_event: int, detection: Detection | None, seen: int | None = None) -> None:
        monitor = self.monitor
        if detection is None or monitor is None:
            return
        if not monitor.should_open(detection):
            return
        detection = monitor.with_onset(detection)
        episode_id = str(uuid.uuid4())
        monitor.open(episode_id, detection)
        self.detections.append(max(0, labelled_event if seen is None else seen))
        self.detected_by.append(
            f"{detection.kind}/{detection.method} {detection.statistic:.4g}>{detection.threshold:.4g}"
        )
        onset_ms = detection.onset_ms if detection.onset_ms is not None else detection.window_start_ms
        onset = max(0, self._event(onset_ms))
        now = self._time(labelled_event + self.config.label_delay)
        ask = trigger_policy.Ask(
            trigger_id=trigger_policy.drift_trigger_id(self.project.model.name, episode_id),
            kind="drift",
            model_name=self.project.model.name,
            event_time=now,
            episode_id=episode_id,
            since=self._time(onset),
        )
        self.asks.append((ask, onset))

    def on_label(self, t: int, event: int, label: int, prediction: int, version: int) -> None:
        self._flush_if_behind(event)
        value, event_id = str(self.info.classes[label]), str(event)
        if self.monitor is None:
            return
        if event_id not in self.monitor.predictions:
            self.waiting_labels[event_id] = value
            return
        self._outcome(event, self.monitor.add_label(event_id, value))

    def _flush_if_behind(self, event: int) -> None:
        if self.buffer and self.buffer[0][0] <= event:
            self._flush()

    # -- training --------------------------------------------------------------------------------

    def _index(self, when: datetime) -> int:
        return round((when - START).total_seconds() * self.events_per_second)

    def _gap(self, ask: trigger_policy.Ask) -> int | None:
        """A count cooldown's gap, as training's store counts it: the examples (events) or labelled
        examples whose event time lies between the two drift events; every event here is labelled."""
        if self.last_request is None or self.project.training.cooldown_spec.is_duration:
            return None
        return abs(self._index(ask.event_time) - self.last_request_at)

    def _labelled_since(self, t: int, onset: int) -> int:
        return max(0, t - self.config.label_delay - onset + 1)

    def wants_retrain(self, t: int) -> Retrain | None:
        if self.version == 0:
            return Retrain(0, "first model") if self.config.labelled(t) >= self.config.window else None
        training = self.project.training
        request: Retrain | None = None
        while self.asks:
            ask, onset = self.asks.pop(0)
            decision = trigger_policy.decide(
                ask,
                trigger_policy.TriggerState(None, self.last_request, self._gap(ask)),
                cooldown=training.cooldown_spec,
                labelled=self._labelled_since(t, onset or 0),
                min_examples=training.min_examples,
            )
            self.decisions.append(f"{t}: {decision.decision} {decision.reason}")
            if decision.decision != trigger_policy.REQUESTED:
                continue
            self.last_request = ask.event_time
            self.last_request_at = self._index(ask.event_time)
            if decision.waiting:
                self.waiting = (ask, onset)
            else:
                self.waiting = None
                request = self._request(ask, onset, "")
        if request is None and self.waiting is not None:
            ask, onset = self.waiting
            if trigger_policy.enough_labelled(self._labelled_since(t, onset or 0), training.min_examples):
                self.waiting = None
                request = self._request(ask, onset, " (waited)")
        if request is not None:
            # The run's selection, as runs.py: the most recent max_examples labelled examples (older
            # than the onset too); the run then chooses its window (driftline_training.window); a
            # refresh has no onset and fits on all of them.
            last = t - self.config.label_delay
            self.run_since = request.since if training.selection == "since_drift" and not self.run_refresh else None
            request = Retrain(max(0, last - training.max_examples + 1), request.reason)
        return request

    def _request(self, ask: trigger_policy.Ask, onset: int | None, note: str) -> Retrain:
        self.requesting_episode = ask.episode_id
        self.run_refresh = onset is None
        what = "refresh" if onset is None else f"since {onset}"
        return Retrain(onset or 0, f"drift {ask.episode_id[:8]}#{ask.episode_attempt} {what}{note}")

    def fit(self, t: int, data: Labelled) -> Model | None:
        classes = self.info.classes
        examples = [
            Example(str(i), self._time(i), dict(zip(self.names, row.tolist(), strict=True)), str(classes[c]))
            for i, row, c in zip(data.index.tolist(), data.x, data.y.tolist(), strict=True)
        ]
        since = None if self.version == 0 or self.run_since is None else self._time(self.run_since)
        try:
            result, choice = fit_choosing_window(self.project, examples, since, self.project.training)
        except TrainingFailure as failure:
            self.decisions.append(f"{t}: run failed {failure.error_type}")
            self._run_reported()
            return None
        if choice is not None:
            self.decisions.append(f"{t}: window {choice.chosen} {choice.accuracy}")
        champion_version = self.version or None
        champion_metrics = comparison_metrics = None
        paired: tuple[int, int] | None = None
        if self.champion is not None:
            compared = pipeline.comparison_set(
                result.holdout,
                self.champion_train_end,
                recent=self.project.promotion.compare_recent,  # every run after the first is a drift run
                minimum=MIN_COMPARISON_EXAMPLES,
            )
            if len(compared) >= MIN_COMPARISON_EXAMPLES:
                champion_metrics = pipeline.evaluate_on_holdout(self.champion, compared, self.names, self.positive)
                paired = pipeline.paired_counts(result.judged, self.names, self.champion, self.names, compared)
                comparison_metrics = (
                    dict(result.metrics)
                    if len(compared) == len(result.holdout)
                    else pipeline.evaluate_on_holdout(result.judged, compared, self.names, self.positive)
                )
        decision = registry_policy.decide(
            self.project.promotion,
            metrics=result.metrics,
            champion_version=champion_version,
            evaluated_against=champion_version if champion_metrics is not None else None,
            champion_metrics=champion_metrics,
            comparison_metrics=comparison_metrics,
            n_compared=len(compared) if champion_metrics is not None else None,
            wins=paired[0] if paired else None,
            losses=paired[1] if paired else None,
            refresh=self.run_refresh,
        )
        self.decisions.append(f"{t}: {'promoted' if decision.promote else 'rejected'} {decision.reason}")
        if not decision.promote:
            self._run_reported()
            return None
        self._flush()  # the old champion's buffered events are its own
        self.champion, self.champion_train_end = result.model, result.fitted_until
        metadata = {
            "reference_profile": result.reference_profile,
            "metrics": result.metrics,
            "feature_names": result.feature_names,
            "positive_class": self.positive,
            "n_train": len(result.train),
            "n_holdout": len(result.holdout),
            "drift_episode_id": self.requesting_episode if self.version else None,
            "selection": {"window": choice.as_dict() if choice is not None else None},
            "refresh": self.run_refresh,
            "comparison": {"wins": paired[0], "losses": paired[1]} if paired else None,
        }
        self._next_reference = metadata
        return _Coded(result.model, classes)

    def _run_reported(self) -> None:
        """A rejected candidate or a failed run of the open episode's request: the episode may ask
        again (monitoring follows models.rejected and training.failed, see Monitoring.on_run_outcome)."""
        episode = self.monitor.episode if self.monitor is not None else None
        if episode is not None and self.requesting_episode == episode.episode_id:
            episode.outcome()

    def on_model(self, t: int, version: int) -> None:
        self.version = version
        reference = Reference.from_metadata(
            self.project.model.name, version, self._next_reference, f"promotion-{version}"
        )
        previous = self.monitor
        self.monitor = ModelMonitor(
            reference,
            self.project.drift,
            max_examples=self.project.training.max_examples,
            min_examples=self.project.training.min_examples,
            refresh_confidence=self.project.promotion.refresh_confidence,
        )
        self.monitor.carry(previous.episode if previous is not None else None)
        self.waiting_labels = {}
