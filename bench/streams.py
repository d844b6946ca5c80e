"""Labelled streams with known drift, for the loop benchmark (``bench/loop.py``).

``make_stream(family, kind, seed, n)`` gives a :class:`Stream`: ``n`` events, each
``(features, label, concept_id)``, and the drift schedule as metadata (:class:`Drift`: onset and
transition width). The same (family, kind, seed, n) always gives the same stream.

Families (generators are reused, not copied):

* ``loan``: the project's example workload, ``LoanStream`` (Agrawal functions, concept drift and
  covariate shift through its own schedule methods). Features are what the platform's model sees:
  the project file's raw and derived features (``FeatureSet.row``), in ``project.model_features``
  order. Concept A is f2, concept B f7 (the closed-loop scenario's pair). Label noise 5 %.
* ``hyperplane``: ``river.datasets.synth.Hyperplane`` (10 features, 2 of them drifting when it
  drifts). Concepts A and B are two hyperplanes (two seeds). Noise ``noise_percentage=0.05``, which
  in river 0.26 flips 4 % of the labels (it tests ``0.01 + random() <= noise_percentage``).
* ``sea``: ``river.datasets.synth.SEA``, A = variant 2 (x0 + x1 > 7), B = variant 3 (> 9.5),
  5 % noise. It has no incremental stream (its concepts are four fixed thresholds).
* ``weather`` (held out, like ``rbf``): recorded data, NOAA daily weather, in ``bench/realdata.py``;
  one stream of kind ``real`` (the data's order, the same for every seed).

Kinds (positions are fractions of ``n``, so that short test streams have the same shape; at the
default n = 20 000 the first onset is after the benchmark's first model, trained at event 3 199):

* ``sudden``: A, then B from onset 0.5 n on (every event from the onset follows B).
* ``gradual``: A to B across ``width`` = 0.15 n events (3 000 at n = 20 000) from onset 0.4 n.
  loan: the share of B grows linearly from 0 at the onset to 1 at onset + width (``LoanStream``).
  river: ``ConceptDriftStream``'s sigmoid, placed so that the share of B is 1 % at the onset and
  99 % at onset + width (centre at onset + width / 2).
* ``incremental``: from onset 0.3 n to the end the concept moves a little with every step.
  hyperplane: ``mag_change`` from the onset on (``sigma=0``, so the two drifting weights grow
  steadily). loan: the labelling function is applied to salary x s(t) while the features keep the
  salary as generated; s grows geometrically from 1 to 1.6, one step every n / 200 events (the
  bank's salary bands move; P(x) does not change, P(y | x) does). ``concept_id`` counts the steps.
* ``recurring``: A, B from 0.35 n, A again from 0.65 n (the same A: for the river families the
  same generator continues, so no input is replayed).
* ``stationary``: A throughout.
* ``covariate``: P(x) shifts at 0.5 n, the labelling function does not. loan: salary x 1.3 and
  loan x 0.7 (``schedule_covariate_shift``; the label is computed on the shifted values). river:
  sample-selection bias: after the onset an input is kept with probability x0 x1 (hyperplane) or
  x0 x2 / 100 (sea), so the labels still come from the unchanged generator.

Sudden and recurring switches in the river families are exact (the first generator's events up to
the onset, then the second's); ``ConceptDriftStream`` with ``width=1`` still mixes the two concepts
over three events around its position (share 0.018, 0.5, 0.982), so the onset would not be exact.
Each sub-generator gets its own seed: ``ConceptDriftStream`` advances only the stream it draws
from, so two generators with the same seed would replay the first inputs after the switch.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from typing import Any

import numpy as np
from river.datasets import base as river_base
from river.datasets import synth

from driftline.project import Project, load_project
from driftline_cli.examples.loan_approval.generator import LoanStream
from driftline_ml.featuredefs import FeatureSet

KINDS = ("sudden", "gradual", "incremental", "recurring", "stationary", "covariate")
FAMILIES = ("loan", "hyperplane", "sea", "rbf", "weather")
REAL_FAMILIES = ("weather",)  # recorded data: one stream each, of kind REAL
REAL = "real"

Features = dict[str, float | str]

_START = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)  # loan events' timestamps (not used by the benchmark)
_LOAN_A, _LOAN_B = 2, 7
_LOAN_INCREMENTAL_SCALE = 1.6
_HYPERPLANE_MAG_CHANGE = 1e-4
_SEA_A, _SEA_B = 2, 3
_RBF_CHANGE_SPEED = 1e-4  # per event: a model never retrained falls from 0.95 to ~0.62 over the stream
_DEFAULT_NOISE = 0.05


@dataclass(frozen=True)
class Drift:
    """One change of the stream: from event ``onset`` on, over ``width`` events (1: sudden)."""

    onset: int
    width: int = 1
    concept: bool = True  # False: only P(x) changes (covariate shift)

    @property
    def end(self) -> int:
        """First event after the transition."""
        return self.onset + self.width


@dataclass
class Stream:
    family: str
    kind: str
    seed: int
    features: list[Features]
    labels: list[Any]
    concepts: list[int]
    drifts: list[Drift]
    feature_names: list[str]
    description: str
    _matrix: np.ndarray | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.labels)

    def __iter__(self) -> Iterator[tuple[Features, Any, int]]:
        return iter(zip(self.features, self.labels, self.concepts, strict=True))

    @property
    def onsets(self) -> list[int]:
        return [d.onset for d in self.drifts]

    def matrix(self) -> np.ndarray:
        """The features as the model's float matrix (the platform's ``to_matrix``), in ``feature_names`` order."""
        if self._matrix is None:
            from driftline_ml.models import to_matrix  # imports skops (seconds): only when a matrix is needed

            self._matrix = to_matrix(self.features, self.feature_names)
        return self._matrix


def make_stream(family: str, kind: str, seed: int, n: int, *, noise: float | None = None) -> Stream:
    """The ``kind`` stream of ``family`` for ``seed``: ``n`` events with their labels and concept ids."""
    if kind not in (*KINDS, REAL):
        raise ValueError(f"unknown kind {kind!r}: one of {(*KINDS, REAL)}")
    if family not in _BUILDERS:
        raise ValueError(f"unknown family {family!r}: one of {FAMILIES}")
    if n < 100:
        raise ValueError("a stream needs at least 100 events")
    return _BUILDERS[family](kind, seed, n, _DEFAULT_NOISE if noise is None else noise)


def available(family: str, kind: str) -> bool:
    if (family in REAL_FAMILIES) != (kind == REAL):
        return False
    return not (family == "sea" and kind == "incremental")


def kinds(family: str) -> tuple[str, ...]:
    """The kinds a family is run with when none are named (``available`` still filters them)."""
    return (REAL,) if family in REAL_FAMILIES else KINDS


def schedule(kind: str, n: int) -> list[Drift]:
    """Where the drifts of a ``kind`` stream of ``n`` events are (the same for every family)."""
    if kind == "sudden":
        return [Drift(n // 2)]
    if kind == "gradual":
        return [Drift(round(0.4 * n), max(2, round(0.15 * n)))]
    if kind == "incremental":
        onset = round(0.3 * n)
        return [Drift(onset, n - onset)]
    if kind == "recurring":
        return [Drift(round(0.35 * n)), Drift(round(0.65 * n))]
    if kind == "covariate":
        return [Drift(n // 2, 1, concept=False)]
    return []


# ---------------------------------------------------------------------------------------------
# loan


@cache
def _project() -> Project:
    return load_project()


def _loan(kind: str, seed: int, n: int, noise: float) -> Stream:
    project = _project()
    feature_set = FeatureSet(project.features)
    drifts = schedule(kind, n)
    stream = LoanStream(seed=seed, function=_LOAN_A, noise=noise, start=_START)
    steps = [0] * n  # incremental: salary steps applied to the labeller's view of each event
    description = f"loan f{_LOAN_A}"
    if kind in ("sudden", "gradual"):
        d = drifts[0]
        stream.schedule_concept_drift(at=d.onset, function=_LOAN_B, width=0 if d.width == 1 else d.width)
        description += f" -> f{_LOAN_B} at {d.onset}" + (f" over {d.width}" if d.width > 1 else "")
    elif kind == "recurring":
        stream.schedule_concept_drift(at=drifts[0].onset, function=_LOAN_B)
        stream.schedule_concept_drift(at=drifts[1].onset, function=_LOAN_A)
        description += f" -> f{_LOAN_B} at {drifts[0].onset} -> f{_LOAN_A} at {drifts[1].onset}"
    elif kind == "covariate":
        at = drifts[0].onset
        stream.schedule_covariate_shift(at=at, field="salary", scale=1.3)
        stream.schedule_covariate_shift(at=at, field="loan", scale=0.7)
        description += f", salary x1.3 and loan x0.7 from {at}"
    elif kind == "incremental":
        onset = drifts[0].onset
        every = max(1, n // 200)
        n_steps = math.ceil((n - onset) / every)
        ratio = _LOAN_INCREMENTAL_SCALE ** (1 / n_steps)
        for k in range(n_steps):
            stream.schedule_covariate_shift(at=onset + k * every, field="salary", scale=ratio)
        for i in range(onset, n):
            steps[i] = (i - onset) // every + 1
        description += f", labelled on salary x1 -> x{_LOAN_INCREMENTAL_SCALE} from {onset} ({n_steps} steps)"
    # Incremental: the labels come from the stream with the scaled salary, the inputs from the same
    # stream unscaled (shifts draw no random numbers, so both draw the same applications).
    inputs = LoanStream(seed=seed, function=_LOAN_A, noise=noise, start=_START) if kind == "incremental" else stream
    features, labels, concepts = [], [], []
    for i, item in enumerate(stream.take(n)):
        payload = (inputs.next() if inputs is not stream else item).event["payload"]
        row = feature_set.row(payload)
        features.append({name: row[name] for name in project.model_features})  # type: ignore[misc]
        labels.append(item.label)
        concepts.append(steps[i] if kind == "incremental" else item.function)
    return Stream("loan", kind, seed, features, labels, concepts, drifts, list(project.model_features), description)


# ---------------------------------------------------------------------------------------------
# river


class _Tagged(river_base.SyntheticDataset):
    """A river dataset whose targets carry the concept id: ``(y, concept)``, so that the concept of
    every event drawn through ``ConceptDriftStream`` is known."""

    def __init__(self, inner: river_base.SyntheticDataset, concept: int) -> None:
        super().__init__(
            task=inner.task,
            n_features=inner.n_features,
            n_samples=inner.n_samples,
            n_classes=inner.n_classes,
            n_outputs=inner.n_outputs,
        )
        self.inner = inner
        self.concept = concept

    def __iter__(self) -> Iterator[tuple[dict[Any, float], tuple[Any, int]]]:
        for x, y in self.inner:
            yield x, (y, self.concept)


def _tag(it: Iterator[tuple[dict[Any, float], Any]], concept: int) -> Iterator[tuple[dict[Any, float], Any, int]]:
    return ((x, y, concept) for x, y in it)


def _selected(
    it: Iterator[tuple[dict[Any, float], Any, int]], keep: Callable[[dict[Any, float]], float], rng: random.Random
) -> Iterator[tuple[dict[Any, float], Any, int]]:
    """Sample-selection bias: an event is kept with probability ``keep(x)``; P(y | x) is untouched."""
    for x, y, c in it:
        if rng.random() < keep(x):
            yield x, y, c


@dataclass(frozen=True)
class _RiverFamily:
    name: str
    concept: Callable[[int, int], river_base.SyntheticDataset]  # (concept 0/1, seed) -> generator
    keep: Callable[[dict[Any, float]], float]  # covariate-shift selection
    incremental: Callable[[int, int], Iterator[tuple[dict[Any, float], Any, int]]] | None
    description: str


def _river(family: _RiverFamily, kind: str, seed: int, n: int) -> Stream:
    drifts = schedule(kind, n)
    # Sub-generator seeds: distinct per concept and per stream seed.
    seed_a, seed_b, seed_mix = 1000 * seed + 1, 1000 * seed + 2, 1000 * seed + 3
    a = _tag(iter(family.concept(0, seed_a)), 0)
    events: Iterator[tuple[dict[Any, float], Any, int]]
    if kind == "stationary":
        events = a
    elif kind == "sudden":
        events = itertools.chain(itertools.islice(a, drifts[0].onset), _tag(iter(family.concept(1, seed_b)), 1))
    elif kind == "recurring":
        b = _tag(iter(family.concept(1, seed_b)), 1)
        first, second = drifts[0].onset, drifts[1].onset
        events = itertools.chain(itertools.islice(a, first), itertools.islice(b, second - first), a)
    elif kind == "gradual":
        d = drifts[0]
        mixed = synth.ConceptDriftStream(
            stream=_Tagged(family.concept(0, seed_a), 0),
            drift_stream=_Tagged(family.concept(1, seed_b), 1),
            # river counts samples from 1: the share of the drift stream at 0-based event i is
            # 1 / (1 + exp(-4 (i + 1 - position) / width)); 1 % at the onset, 99 % at onset + width.
            position=d.onset + d.width / 2 + 1,
            width=2 * d.width / math.log(99),
            seed=seed_mix,
        )
        events = ((x, y, c) for x, (y, c) in mixed)
    elif kind == "covariate":
        onset = drifts[0].onset
        events = itertools.chain(itertools.islice(a, onset), _selected(a, family.keep, random.Random(seed_mix)))
    else:  # incremental
        assert family.incremental is not None
        events = family.incremental(seed_a, drifts[0].onset)
    features, labels, concepts = [], [], []
    for x, y, c in itertools.islice(events, n):
        features.append({f"x{k}": float(v) for k, v in x.items()})
        labels.append(y)
        concepts.append(c)
    names = list(features[0])
    return Stream(family.name, kind, seed, features, labels, concepts, drifts, names, family.description)


def _hyperplane(seed: int, noise: float) -> synth.Hyperplane:
    """One concept (its seed draws the weights); ``sigma=0`` keeps an incremental drift's direction."""
    return synth.Hyperplane(seed=seed, n_features=10, n_drift_features=2, noise_percentage=noise, sigma=0.0)


def _hyperplane_incremental(noise: float) -> Callable[[int, int], Iterator[tuple[dict[Any, float], Any, int]]]:
    def events(seed: int, onset: int) -> Iterator[tuple[dict[Any, float], Any, int]]:
        dataset = _hyperplane(seed, noise)
        if onset < 2:
            raise ValueError("an incremental hyperplane stream needs its onset at event 2 or later")
        for i, (x, y) in enumerate(dataset):
            # Hyperplane labels an event, then moves its weights (reading ``mag_change`` each time),
            # then yields it: set after event onset - 2, it first moves the weights event ``onset``
            # is labelled with. tests/unit/bench/test_loop_streams.py pins this.
            if i == onset - 2:
                dataset.mag_change = _HYPERPLANE_MAG_CHANGE
            yield x, y, 0 if i < onset else i - onset + 1

    return events


def _hyperplane_family(kind: str, seed: int, n: int, noise: float) -> Stream:
    family = _RiverFamily(
        "hyperplane",
        lambda concept, s: _hyperplane(s, noise),
        lambda x: x[0] * x[1],
        _hyperplane_incremental(noise),
        f"river Hyperplane(10 features, 2 drifting, noise_percentage={noise})",
    )
    return _river(family, kind, seed, n)


def _sea_family(kind: str, seed: int, n: int, noise: float) -> Stream:
    if not available("sea", kind):
        raise ValueError("the sea family has no incremental stream: its concepts are four fixed thresholds")
    family = _RiverFamily(
        "sea",
        lambda concept, s: synth.SEA(variant=_SEA_B if concept else _SEA_A, noise=noise, seed=s),
        lambda x: x[0] * x[2] / 100,
        None,
        f"river SEA(variant {_SEA_A} -> {_SEA_B}, noise={noise})",
    )
    return _river(family, kind, seed, n)


class _Noisy(river_base.SyntheticDataset):
    """A binary river dataset whose labels are flipped with probability ``noise`` (RandomRBF has
    no noise of its own); ``inner`` stays reachable, so a stream can change it as it runs."""

    def __init__(self, inner: river_base.SyntheticDataset, noise: float, seed: int) -> None:
        super().__init__(task=inner.task, n_features=inner.n_features, n_classes=inner.n_classes)
        self.inner, self.noise, self.seed = inner, noise, seed

    def __iter__(self) -> Iterator[tuple[dict[Any, float], Any]]:
        rng = random.Random(self.seed)
        for x, y in self.inner:
            yield x, (1 - y) if rng.random() < self.noise else y


def _rbf(seed: int, noise: float) -> _Noisy:
    """One concept: 50 Gaussian centroids in 10 dimensions (its seed places them and their classes)."""
    inner = synth.RandomRBFDrift(
        seed_model=seed, seed_sample=seed + 7, n_classes=2, n_features=10, n_centroids=50, change_speed=0.0
    )
    return _Noisy(inner, noise, seed + 11)


def _rbf_incremental(noise: float) -> Callable[[int, int], Iterator[tuple[dict[Any, float], Any, int]]]:
    def events(seed: int, onset: int) -> Iterator[tuple[dict[Any, float], Any, int]]:
        dataset = _rbf(seed, noise)
        for i, (x, y) in enumerate(dataset):
            # RandomRBFDrift moves its centroids (by change_speed, read at every step) before it
            # draws an event: set after event onset - 1 is drawn, event ``onset`` is the first moved.
            if i == onset - 1:
                dataset.inner.change_speed = _RBF_CHANGE_SPEED
            yield x, y, 0 if i < onset else i - onset + 1

    return events


def _rbf_family(kind: str, seed: int, n: int, noise: float) -> Stream:
    family = _RiverFamily(
        "rbf",
        lambda concept, s: _rbf(s, noise),
        lambda x: min(1.0, max(0.0, x[0] * x[1] * 2)),
        _rbf_incremental(noise),
        f"river RandomRBFDrift(10 features, 50 centroids, incremental change_speed={_RBF_CHANGE_SPEED}, "
        f"label noise {noise})",
    )
    return _river(family, kind, seed, n)


def _weather(kind: str, seed: int, n: int, noise: float) -> Stream:
    """Recorded labels: ``noise`` adds none."""
    from bench.realdata import weather  # bench/realdata.py imports this module

    return weather(kind, seed, n)


_BUILDERS: dict[str, Callable[[str, int, int, float], Stream]] = {
    "loan": _loan,
    "hyperplane": _hyperplane_family,
    "sea": _sea_family,
    "rbf": _rbf_family,
    "weather": _weather,
}
