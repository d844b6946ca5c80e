"""Loop benchmark: served accuracy and retraining of retrain policies on streams with known drift.

For every (family, kind, seed) stream of ``bench/streams.py`` the same events are served, one
after the other, by one model per policy, with labels that arrive ``--label-delay`` events late,
and every policy's numbers come from the same run on the same data:

* ``never``: the first model, trained once, serves the whole stream;
* ``cron``: retrain every ``--cron-every`` events after the first model;
* ``adwin``: river's ``ADWIN`` (default parameters) on the 0/1 error stream of the serving model's
  joined labels; after a detection on the label of event s, retrain on the labels of events after
  s once ``--min-examples`` of them have arrived, and again once ``--window`` have;
* ``oracle``: knows when the stream changes (see below) and retrains on data after the change
  with the same rule as ``adwin`` (``--min-examples``, then ``--window`` labels after it).

Run (the default: loan, hyperplane and sea families x 6 kinds (sea: 5) x 3 seeds x 20 000 events;
``--families rbf`` is river's RandomRBFDrift, kept out of the default as a held-out family: no
policy value was chosen on it; ``--families weather`` is recorded data, NOAA daily weather
(``bench/realdata.py``), one stream of kind ``real`` run once (the first seed), held out too; its
oracle knows only the dataset's documented onset, so its delay/false/missed columns are n/a)::

    .venv/bin/python bench/loop.py [--families loan,hyperplane] [--kinds ...] [--seeds 1,2,3]
        [--events 20000] [--label-delay 200] [--cron-every 2000] [--window 3000] [--json PATH]

Simulation (prequential, delayed labels). Events t = 0 .. n-1 are served in order. At time t,
before event t is served, the label of event t - d arrives (d = ``--label-delay`` >= 1); so the
labels known at t are those of events 0 .. t - d. Then the policy may ask for a retrain; the
simulator alone selects the training examples: the most recent ``--window`` labelled events with
index >= the policy's ``since``, all at or before t - d. A model fitted at t serves from event t on
(training takes no simulated time). Hence a model that serves event t was fitted only on labels of
events <= t - d < t. Predictions are made in blocks of events with the model that serves them and
recomputed from t when the model changes at t, so batching changes no prediction.

Every policy gets its first model the same way: at t0 = window + d - 1, when ``window`` labels
exist, on events 0 .. window - 1 (the fit is shared, not repeated). Accuracy is measured on
events t0 .. n-1 ("all") and on the last quarter of the stream; events without a model count
as wrong (only a policy that trains later than t0 has such events).

What the oracle sees: the stream's drift schedule (``Stream.drifts``: onset and width of each
change, concept or covariate) and nothing else that the others do not see: the same labels after
the same delay, never a concept id, never a label early. Its change points are each onset and,
for a transition (gradual, incremental), its end when inside the stream; after a change point p
it retrains on labelled events >= p once ``--min-examples`` and once ``--window`` of them exist;
during a transition it also retrains every ``--cron-every`` events on events >= the onset (an
incremental drift never settles). It is a reference for perfect, immediate detection with the
same retrain rule, not an upper bound on accuracy.

Metrics per stream and policy: served accuracy (all, last quarter); training runs after the
first model ("retrains", and per drift episode); for policies that detect (adwin): alarms, false
alarms (alarms on the label of an event before the first onset; on a stationary stream every
alarm), detection delay (labelled outcomes after the onset seen up to the alarm: an alarm on the
label of event e >= onset has delay e - onset + 1; the first alarm between an onset and the next;
an input-drift alarm needs no label and counts at the last event it saw, so its delay is in events)
and missed onsets. A covariate-only stream's onset is a change of P(x) only: an alarm after it
is counted as its detection, and the accuracy columns say whether retraining helped.
The table shows the mean over seeds ± the standard deviation (delay: over all detected onsets).

River's ADWIN (0.26) empties its window at the first update after a detection, and it reacts to
a fall of the error rate as much as to a rise; the policy gives it a fresh detector for every new
model and only the errors of the model that served the labelled event.

The ``driftline`` column (``--policies ...,driftline``; ``make bench-loop`` runs it) is the
platform's own decision code run in-process on the same records, in ``bench/loop_driftline.py``:
monitoring's ``ModelMonitor`` (windows, tests, detectors, the episode lifecycle: retries while
degraded, consolidation, resolution), training's trigger policy and ``pipeline.fit`` with the
champion comparison, and the registry's promotion policy, with the shipped project's policies
(``--project`` for another file) on every family. That is faithful because those functions are the
ones the services call on the same records (the handlers are thin and the decisions pure), the
simulator enforces the same visibility of labels for every column, and the streams, seeds, delay,
estimator and accuracy accounting are those of the baselines. What it leaves out is Kafka/DB
latency, re-delivery and the time a run takes (a run's model serves from the event at which it
was asked, as for every column).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from river.drift import ADWIN

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.streams import FAMILIES, KINDS, REAL, REAL_FAMILIES, Drift, available, kinds, make_stream  # noqa: E402
from driftline.project import ModelSpec, load_project  # noqa: E402

BASELINES = ("never", "cron", "adwin", "oracle")  # the columns that take any Trainer
POLICY_NAMES = (*BASELINES, "driftline")  # driftline fits the project's own pipeline


# ---------------------------------------------------------------------------------------------
# What the simulator and the policies share


@dataclass(frozen=True)
class LoopConfig:
    label_delay: int = 200
    window: int = 3000
    cron_every: int = 2000
    min_examples: int = 300
    predict_block: int = 2000

    def __post_init__(self) -> None:
        if self.label_delay < 1:
            raise ValueError("label_delay must be >= 1: with 0 the label of an event would be known before serving it")
        if min(self.window, self.cron_every, self.min_examples, self.predict_block) < 1:
            raise ValueError("window, cron_every, min_examples and predict_block must be positive")

    @property
    def first_model_at(self) -> int:
        """t0: the first time ``window`` labels exist (events 0 .. window - 1)."""
        return self.window + self.label_delay - 1

    def labelled(self, t: int) -> int:
        """How many labels have arrived by time t (those of events 0 .. t - d)."""
        return max(0, t - self.label_delay + 1)


@dataclass(frozen=True)
class StreamInfo:
    """What a policy is told about the stream. Only the oracle may read ``drifts``."""

    family: str
    kind: str
    seed: int
    n: int
    feature_names: tuple[str, ...]
    classes: tuple[Any, ...]  # label code k is classes[k]
    drifts: tuple[Drift, ...]


@dataclass(frozen=True)
class Retrain:
    """A policy's request: train on the most recent labelled events with index >= ``since``."""

    since: int
    reason: str


@dataclass(frozen=True)
class Labelled:
    """The training examples the simulator hands to a policy: events ``index`` (consecutive)."""

    index: np.ndarray
    x: np.ndarray
    y: np.ndarray

    @property
    def first(self) -> int:
        return int(self.index[0])

    @property
    def last(self) -> int:
        return int(self.index[-1])


class Model(Protocol):
    def predict(self, x: np.ndarray) -> np.ndarray: ...


class Policy(Protocol):
    """A column of the benchmark: when to retrain, and what to serve after a training run.

    The simulator calls, at each time t: ``on_label`` (the label of event t - d), then
    ``wants_retrain``; if it asks, ``fit`` with the examples the simulator selected, and
    ``on_model`` when fit returned a model (it serves from event t on); then, when ``observes``,
    ``observe`` with event t and the prediction served for it. Labels are codes (``StreamInfo.classes``).
    """

    name: str
    observes: bool
    detects: bool
    detections: list[int]  # events whose label raised an alarm (when ``detects``)

    def start(self, info: StreamInfo, config: LoopConfig) -> None: ...

    def observe(self, t: int, x: np.ndarray, prediction: int) -> None: ...

    def on_label(self, t: int, event: int, label: int, prediction: int, version: int) -> None: ...

    def wants_retrain(self, t: int) -> Retrain | None: ...

    def fit(self, t: int, data: Labelled) -> Model | None: ...

    def on_model(self, t: int, version: int) -> None: ...


class Trainer:
    """Fits the benchmark's estimator; the same selection of one stream is fitted once for all policies."""

    def __init__(self, build: Callable[[], Any]) -> None:
        self.build = build
        self._fitted: dict[tuple[int, int], Any] = {}
        self.fits = 0
        self.fit_seconds = 0.0

    def fit(self, data: Labelled) -> Model:
        key = (data.first, data.last)
        if key not in self._fitted:
            started = time.perf_counter()
            model = self.build()
            model.fit(data.x, data.y)
            self.fit_seconds += time.perf_counter() - started
            self.fits += 1
            self._fitted[key] = model
        return self._fitted[key]  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------------------------
# The simulator


class LeakError(AssertionError):
    """A model would be fitted on a label that has not arrived yet."""


@dataclass
class Run:
    policy: str
    predictions: np.ndarray  # label code served for each event (-1: no model yet)
    versions: np.ndarray  # version of the model that served each event (0: none)
    runs: list[dict[str, Any]]  # every training run: time, selection, reason, served
    detections: list[int] | None


def simulate(x: np.ndarray, y: np.ndarray, info: StreamInfo, policy: Policy, config: LoopConfig) -> Run:
    """Serve the stream with ``policy`` deciding when to retrain; see the module docstring."""
    n, d = len(y), config.label_delay
    predictions = np.full(n, -1, dtype=np.int64)
    versions = np.zeros(n, dtype=np.int64)
    runs: list[dict[str, Any]] = []
    model: Model | None = None
    version = 0
    predicted_until = 0  # predictions[t:predicted_until] are the current model's
    policy.start(info, config)
    for t in range(n):
        event = t - d
        if event >= 0:
            policy.on_label(t, event, int(y[event]), int(predictions[event]), int(versions[event]))
        request = policy.wants_retrain(t)
        if request is not None:
            last = t - d
            first = max(request.since, last - config.window + 1, 0)
            if first <= last:
                if last >= t:  # the selection rule above guarantees this cannot happen
                    raise LeakError(f"at {t}: selection ends at {last}")
                index = np.arange(first, last + 1)
                new = policy.fit(t, Labelled(index, x[first : last + 1], y[first : last + 1]))
                runs.append({"t": t, "first": first, "last": last, "reason": request.reason, "served": new is not None})
                if new is not None:
                    model, version = new, version + 1
                    predicted_until = t
                    policy.on_model(t, version)
        if model is not None and t >= predicted_until:
            predicted_until = min(n, t + config.predict_block)
            predictions[t:predicted_until] = model.predict(x[t:predicted_until])
        versions[t] = version
        if policy.observes:
            policy.observe(t, x[t], int(predictions[t]))
    return Run(policy.name, predictions, versions, runs, list(policy.detections) if policy.detects else None)


# ---------------------------------------------------------------------------------------------
# The baselines


class Baseline:
    """First model at t0 on the first ``window`` labels; ``decide`` says when to retrain after that."""

    name = "baseline"
    observes = False
    detects = False

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.detections: list[int] = []

    def start(self, info: StreamInfo, config: LoopConfig) -> None:
        self.info, self.config = info, config
        self.version, self.model_at = 0, -1
        self.detections = []

    def observe(self, t: int, x: np.ndarray, prediction: int) -> None:
        return None

    def on_label(self, t: int, event: int, label: int, prediction: int, version: int) -> None:
        return None

    def wants_retrain(self, t: int) -> Retrain | None:
        if self.version == 0:
            return Retrain(0, "first model") if self.config.labelled(t) >= self.config.window else None
        return self.decide(t)

    def decide(self, t: int) -> Retrain | None:
        return None

    def fit(self, t: int, data: Labelled) -> Model | None:
        return self.trainer.fit(data)

    def on_model(self, t: int, version: int) -> None:
        self.version, self.model_at = version, t


class Never(Baseline):
    name = "never"


class Cron(Baseline):
    name = "cron"

    def decide(self, t: int) -> Retrain | None:
        first = self.config.first_model_at
        return Retrain(0, "cron") if t > first and (t - first) % self.config.cron_every == 0 else None


@dataclass
class AfterChange:
    """Retrain on labelled events >= ``since``: once ``min_examples`` of them exist, again at ``window``."""

    since: int
    stage: int = 0  # 0: waiting for min_examples, 1: for window, 2: done

    def due(self, t: int, config: LoopConfig) -> Retrain | None:
        labelled = t - config.label_delay - self.since + 1
        if self.stage == 0 and labelled >= config.min_examples:
            self.stage = 2 if labelled >= config.window else 1
            return Retrain(self.since, f"{labelled} labels after {self.since}")
        if self.stage == 1 and labelled >= config.window:
            self.stage = 2
            return Retrain(self.since, f"{labelled} labels after {self.since}")
        return None


class Adwin(Baseline):
    name = "adwin"
    detects = True

    def start(self, info: StreamInfo, config: LoopConfig) -> None:
        super().start(info, config)
        self.after: AfterChange | None = None
        self.adwin = _adwin()

    def on_label(self, t: int, event: int, label: int, prediction: int, version: int) -> None:
        if version == 0 or version != self.version:
            return  # an error of an earlier model says nothing about the one serving now
        if self.after is not None and self.after.stage == 0:
            return  # a change was detected and its retrain is pending
        self.adwin.update(float(prediction != label))
        if self.adwin.drift_detected:
            self.detections.append(event)
            self.after = AfterChange(event + 1)

    def decide(self, t: int) -> Retrain | None:
        return self.after.due(t, self.config) if self.after is not None else None

    def on_model(self, t: int, version: int) -> None:
        super().on_model(t, version)
        self.adwin = _adwin()


def _adwin() -> ADWIN:
    return ADWIN()  # river's defaults: delta 0.002, a check every 32 updates


class Oracle(Baseline):
    name = "oracle"

    def start(self, info: StreamInfo, config: LoopConfig) -> None:
        super().start(info, config)
        points = {d.onset for d in info.drifts} | {d.end for d in info.drifts if d.width > 1 and d.end < info.n}
        self.points = sorted(points)
        self.transitions = [(d.onset, d.end) for d in info.drifts if d.width > 1]
        self.after: AfterChange | None = None

    def decide(self, t: int) -> Retrain | None:
        while self.points and self.points[0] <= t:  # learns of a change when it happens, not before
            self.after = AfterChange(self.points.pop(0))
        if self.after is None:
            return None
        request = self.after.due(t, self.config)
        if request is not None:
            return request
        for onset, end in self.transitions:
            if onset <= t < end and self.after.stage > 0 and t - self.model_at >= self.config.cron_every:
                return Retrain(onset, "during the transition")
        return None


def _driftline(trainer: Trainer, events_per_second: float = 300.0, project: str | None = None) -> Policy:
    from bench.loop_driftline import Driftline  # imports the services: only when asked for

    return Driftline(trainer, events_per_second, project)


POLICIES: dict[str, Callable[..., Policy]] = {
    "never": Never,
    "cron": Cron,
    "adwin": Adwin,
    "oracle": Oracle,
    "driftline": _driftline,
}


# ---------------------------------------------------------------------------------------------
# Metrics


def metrics(run: Run, y: np.ndarray, info: StreamInfo, config: LoopConfig) -> dict[str, Any]:
    n = len(y)
    correct = run.predictions == y
    start, last_quarter = config.first_model_at, n - n // 4
    retrains = max(0, len(run.runs) - 1)
    episodes = len(info.drifts)
    out: dict[str, Any] = {
        "accuracy": float(correct[start:].mean()),
        "accuracy_last_quarter": float(correct[last_quarter:].mean()),
        "retrains": retrains,
        "runs_per_episode": retrains / episodes if episodes else None,
        "served_models": int(run.versions.max()),
    }
    if run.detections is not None:
        onsets = [d.onset for d in info.drifts]
        first_onset = onsets[0] if onsets else n
        delays: list[int | None] = []
        for k, onset in enumerate(onsets):
            until = onsets[k + 1] if k + 1 < len(onsets) else n
            hits = [e for e in run.detections if onset <= e < until]
            delays.append(hits[0] - onset + 1 if hits else None)
        out |= {
            "alarms": len(run.detections),
            "false_alarms": sum(e < first_onset for e in run.detections),
            "delays": delays,
            "missed": sum(dl is None for dl in delays),
            "detections": run.detections,
        }
    return out


# ---------------------------------------------------------------------------------------------
# One stream, all policies (a worker's job)


@dataclass(frozen=True)
class Job:
    family: str
    kind: str
    seed: int
    events: int
    config: LoopConfig
    estimator: str
    params: dict[str, Any]
    estimator_seed: int
    policies: tuple[str, ...] = POLICY_NAMES
    events_per_second: float = 300.0
    project: str | None = None  # driftline: the project file whose policies it runs


def run_stream(job: Job) -> dict[str, Any]:
    from threadpoolctl import threadpool_limits

    from driftline_ml.models import build_estimator

    started = time.perf_counter()
    stream = make_stream(job.family, job.kind, job.seed, job.events)
    classes = tuple(sorted(set(stream.labels), key=str))
    code = {c: k for k, c in enumerate(classes)}
    y = np.asarray([code[label] for label in stream.labels], dtype=np.int64)
    x = stream.matrix()
    info = StreamInfo(
        job.family, job.kind, job.seed, len(y), tuple(stream.feature_names), classes, tuple(stream.drifts)
    )
    spec = ModelSpec(name="bench", estimator=job.estimator, params=job.params)
    trainer = Trainer(lambda: build_estimator(spec, seed=job.estimator_seed))
    results: dict[str, Any] = {}
    # One process per core runs one stream: the fits are small, threads would only compete.
    with threadpool_limits(1):
        for name in job.policies:
            policy = (
                POLICIES[name](trainer, job.events_per_second, job.project)
                if name == "driftline"
                else POLICIES[name](trainer)
            )
            run = simulate(x, y, info, policy, job.config)
            results[name] = metrics(run, y, info, job.config) | {"runs": run.runs}
    return {
        "family": job.family,
        "kind": job.kind,
        "seed": job.seed,
        "stream": stream.description,
        "drifts": [asdict(d) for d in stream.drifts],
        "policies": results,
        "fits": trainer.fits,
        "fit_seconds": round(trainer.fit_seconds, 2),
        "seconds": round(time.perf_counter() - started, 2),
    }


# ---------------------------------------------------------------------------------------------
# Table


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _cell(values: Sequence[float], digits: int = 3) -> str:
    if not values:
        return "-"
    mean, std = _mean_std(values)
    return f"{mean:.{digits}f}±{std:.{digits}f}"


@dataclass
class Row:
    family: str
    kind: str
    results: list[dict[str, Any]] = field(default_factory=list)

    def values(self, policy: str, key: str) -> list[float]:
        return [r["policies"][policy][key] for r in self.results if policy in r["policies"]]

    def summary(self, policies: Sequence[str]) -> dict[str, Any]:
        out: dict[str, Any] = {"family": self.family, "kind": self.kind, "seeds": [r["seed"] for r in self.results]}
        for p in policies:
            s: dict[str, Any] = {}
            for key in ("accuracy", "accuracy_last_quarter", "retrains"):
                mean, std = _mean_std(self.values(p, key))
                s[key] = {"mean": mean, "std": std}
            per_episode = [v for v in self.values(p, "runs_per_episode") if v is not None]
            if per_episode:
                mean, std = _mean_std(per_episode)
                s["runs_per_episode"] = {"mean": mean, "std": std}
            if any("alarms" in r["policies"].get(p, {}) for r in self.results):
                delays = [d for r in self.results for d in r["policies"][p]["delays"] if d is not None]
                for key in ("alarms", "false_alarms"):
                    mean, std = _mean_std(self.values(p, key))
                    s[key] = {"mean": mean, "std": std}
                mean, std = _mean_std(delays)
                s["delay_labels"] = {"mean": mean, "std": std, "detected": len(delays)}
                s["missed"] = sum(self.values(p, "missed"))
                s["onsets"] = sum(len(r["policies"][p]["delays"]) for r in self.results)
            out[p] = s
        return out


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |"
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows]
    return "\n".join([line, rule, *body])


def render(rows: list[Row], policies: Sequence[str]) -> str:
    accuracy = []
    for row in rows:
        cells = [row.family, row.kind]
        cells += [_cell(row.values(p, "accuracy")) for p in policies]
        cells += [_cell(row.values(p, "accuracy_last_quarter")) for p in policies]
        accuracy.append(cells)
    header = ["family", "kind", *(f"acc {p}" for p in policies), *(f"last¼ {p}" for p in policies)]
    retrain_policies = [p for p in policies if p != "never"]
    detecting = [p for p in policies if any("alarms" in r["policies"].get(p, {}) for row in rows for r in row.results)]
    second = []
    for row in rows:
        cells = [row.family, row.kind, str(max((len(r["drifts"]) for r in row.results), default=0))]
        cells += [_cell(row.values(p, "retrains"), 1) for p in retrain_policies]
        cells += [_cell([v - 1 for v in row.values(p, "served_models")], 1) for p in detecting if p == "driftline"]
        for p in detecting:
            delays = [d for r in row.results for d in r["policies"][p]["delays"] if d is not None]
            onsets = sum(len(r["policies"][p]["delays"]) for r in row.results)
            if row.family in REAL_FAMILIES:  # its onset is the dataset's note, not a known change
                cells += [_cell(row.values(p, "alarms"), 1), "n/a", "n/a", "n/a"]
                continue
            cells += [
                _cell(row.values(p, "alarms"), 1),
                _cell(row.values(p, "false_alarms"), 1),
                _cell(delays, 0) if onsets else "n/a",
                f"{sum(row.values(p, 'missed'))}/{onsets}" if onsets else "n/a",
            ]
        second.append(cells)
    header2 = ["family", "kind", "episodes", *(f"retrains {p}" for p in retrain_policies)]
    header2 += ["promotions driftline"] if "driftline" in detecting else []
    for p in detecting:
        header2 += [f"{p} alarms", f"{p} false", f"{p} delay (labels)", f"{p} missed"]
    out = (
        "Served accuracy (mean ± std over seeds; all = from the first model on, last¼ = last quarter)\n\n"
        + _table(header, accuracy)
        + "\n\nRetraining and detection (retrains: training runs after the first model; runs per episode ="
        " retrains / episodes)\n\n" + _table(header2, second)
    )
    if {"driftline", "cron", "adwin"} <= set(policies):
        out += "\n\n" + verdicts(rows)
    return out


def verdicts(rows: list[Row]) -> str:
    """The driftline column against the baselines, per row, on the means over seeds: served
    accuracy >= cron and >= adwin (all of the stream), fewer retrains than cron, and on a
    stationary stream no alarm and no run; on a sudden drift a detection delay <= adwin's."""

    def mean(row: Row, p: str, key: str) -> float:
        return statistics.fmean(row.values(p, key))

    def delay(row: Row, p: str) -> float | None:
        ds = [d for r in row.results for d in r["policies"][p]["delays"] if d is not None]
        return statistics.fmean(ds) if ds else None

    def mark(ok: bool, detail: str) -> str:
        return ("yes " if ok else "NO ") + detail

    body = []
    for row in rows:
        acc = mean(row, "driftline", "accuracy")
        cron, adwin = mean(row, "cron", "accuracy"), mean(row, "adwin", "accuracy")
        runs, cron_runs = mean(row, "driftline", "retrains"), mean(row, "cron", "retrains")
        cells = [
            row.family,
            row.kind,
            mark(acc >= cron, f"{acc - cron:+.3f}"),
            mark(acc >= adwin, f"{acc - adwin:+.3f}"),
            mark(runs < cron_runs, f"{runs:.1f} vs {cron_runs:.1f}"),
        ]
        if row.kind == "stationary":
            alarms = mean(row, "driftline", "alarms")
            cells.append(mark(alarms == 0 and runs == 0, f"{alarms:.1f} alarms, {runs:.1f} runs"))
        elif row.kind == "sudden":
            ours, theirs = delay(row, "driftline"), delay(row, "adwin")
            ok = ours is not None and (theirs is None or ours <= theirs)
            cells.append(mark(ok, f"delay {ours or float('nan'):.0f} vs {theirs or float('nan'):.0f}"))
        else:
            cells.append("")
        body.append(cells)
    header = ["family", "kind", "acc >= cron", "acc >= adwin", "fewer runs than cron", "stationary / sudden"]
    return "Driftline against the bar (means over seeds)\n\n" + _table(header, body)


# ---------------------------------------------------------------------------------------------
# Command line


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    project = load_project()
    parser = argparse.ArgumentParser(
        prog="bench/loop.py",
        description="Loop benchmark: never / cron / ADWIN / oracle retraining on streams with known drift, "
        "delayed labels (see the module docstring for the exact semantics).",
    )
    parser.add_argument("--events", type=int, default=20_000, help="events per stream (default 20000)")
    parser.add_argument("--seeds", type=_csv, default=["1", "2", "3"], help="comma-separated seeds (default 1,2,3)")
    parser.add_argument(
        "--families", type=_csv, default=["loan", "hyperplane", "sea"], help=f"comma-separated, of {','.join(FAMILIES)}"
    )
    parser.add_argument(
        "--kinds",
        type=_csv,
        default=None,
        help=f"comma-separated, of {','.join((*KINDS, REAL))} (default: each family's, {REAL} for weather)",
    )
    parser.add_argument("--policies", type=_csv, default=list(POLICY_NAMES), help="comma-separated columns")
    parser.add_argument("--label-delay", type=int, default=200, help="events between an event and its label")
    parser.add_argument("--cron-every", type=int, default=2000, help="cron: retrain every N events")
    parser.add_argument("--window", type=int, default=3000, help="training window: most recent labelled examples")
    parser.add_argument(
        "--min-examples",
        type=int,
        default=project.training.min_examples,
        help=f"labels after a change before adwin/oracle retrain (project: {project.training.min_examples})",
    )
    parser.add_argument(
        "--estimator",
        default=project.model.estimator,
        help=f"scikit-learn estimator class (project: {project.model.estimator})",
    )
    parser.add_argument(
        "--params",
        type=json.loads,
        default=None,
        help=f"estimator params as JSON (default: the project's, {json.dumps(project.model.params)}, "
        "when --estimator is the project's; else {})",
    )
    parser.add_argument(
        "--jobs", type=int, default=len(os.sched_getaffinity(0)), help="worker processes (default: usable cores)"
    )
    parser.add_argument(
        "--events-per-second",
        type=float,
        default=300.0,
        help="driftline: event rate mapping simulated time to the project's wall-clock cooldown (default 300)",
    )
    parser.add_argument(
        "--project",
        type=Path,
        default=None,
        help="driftline: run the policies of this project file (default: the shipped example's); "
        "for a family other than loan its features and label are replaced by the stream's",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write every result as JSON here")
    args = parser.parse_args(argv)
    if args.params is None:
        args.params = dict(project.model.params) if args.estimator == project.model.estimator else {}
    args.estimator_seed = project.training.seed
    for f in args.families:
        if f not in FAMILIES:
            parser.error(f"unknown family {f!r}")
    for k in args.kinds or ():
        if k not in (*KINDS, REAL):
            parser.error(f"unknown kind {k!r}")
    for p in args.policies:
        if p not in POLICIES:
            parser.error(f"unknown policy {p!r}")
    args.seeds = [int(s) for s in args.seeds]
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    config = LoopConfig(args.label_delay, args.window, args.cron_every, args.min_examples)
    if config.first_model_at >= args.events - args.events // 4:
        raise SystemExit(
            "--events too small: the first model (at window + label_delay) must come before the last quarter"
        )
    jobs = [
        Job(
            f,
            k,
            s,
            args.events,
            config,
            args.estimator,
            args.params,
            args.estimator_seed,
            tuple(args.policies),
            args.events_per_second,
            str(args.project) if args.project else None,
        )
        for f in args.families
        for k in args.kinds or kinds(f)
        if available(f, k)
        for s in (args.seeds[:1] if f in REAL_FAMILIES else args.seeds)  # recorded data: one order
    ]
    skipped = [f"{f}/{k}" for f in args.families for k in args.kinds or kinds(f) if not available(f, k)]
    print(
        f"{len(jobs)} streams x {args.events} events, policies {','.join(args.policies)}; label delay "
        f"{config.label_delay}, window {config.window}, cron every {config.cron_every}, min examples "
        f"{config.min_examples}; {args.estimator} {json.dumps(args.params)}; {args.jobs} processes"
        + (f"; not available: {', '.join(skipped)}" if skipped else ""),
        flush=True,
    )
    started = time.perf_counter()
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            results = list(pool.map(run_stream, jobs))
    else:
        results = [run_stream(job) for job in jobs]
    elapsed = time.perf_counter() - started
    rows: dict[tuple[str, str], Row] = {}
    for r in results:
        rows.setdefault((r["family"], r["kind"]), Row(r["family"], r["kind"])).results.append(r)
    print()
    print(render(list(rows.values()), args.policies))
    fits = sum(r["fits"] for r in results)
    fit_seconds = sum(r["fit_seconds"] for r in results)
    if "driftline" in args.policies:
        training = load_project(args.project).training
        spec = training.cooldown_spec
        cooldown = (
            f"{spec.amount:g} s = {spec.amount * args.events_per_second:g} events"
            if spec.is_duration
            else f"{training.cooldown} (counted on the stream)"
        )
        print(
            f"\ndriftline: the policies of {args.project or 'the shipped project'} on every family (the stream's "
            "features); event time = "
            f"t / {args.events_per_second:g} events per second; cooldown {cooldown}"
        )
    print(f"\n{len(results)} streams in {elapsed:.1f} s wall; {fits} fits, {fit_seconds:.1f} s (summed over processes)")
    if args.json:
        doc = {
            "config": asdict(config)
            | {"events": args.events, "estimator": args.estimator, "params": args.params, "seeds": args.seeds},
            "seconds": round(elapsed, 1),
            "summary": [row.summary(args.policies) for row in rows.values()],
            "streams": results,
        }
        args.json.write_text(json.dumps(doc, indent=2, default=str))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
