"""bench/streams.py and bench/loop.py: the streams drift exactly where their metadata says, and the
prequential simulator never lets a model see a label before it is due."""

from __future__ import annotations

from collections.abc import Iterator
from statistics import mean
from typing import Any

import numpy as np
import pytest

from bench import loop, realdata, streams
from bench.streams import Drift, make_stream
from driftline_cli.examples.loan_approval.generator import APPROVE, FUNCTIONS

N = 2000


@pytest.mark.parametrize(
    ("family", "kind"), [("loan", "gradual"), ("hyperplane", "gradual"), ("sea", "covariate"), ("rbf", "sudden")]
)
def test_a_stream_is_the_same_for_a_seed_and_another_for_another_seed(family: str, kind: str) -> None:
    a, b, c = (make_stream(family, kind, seed, N) for seed in (1, 1, 2))
    assert list(a) == list(b)
    assert a.features != c.features
    assert len(a) == N and a.drifts == c.drifts == streams.schedule(kind, N)


def _loan_label(features: dict[str, Any], function: int, salary_scale: float = 1.0) -> bool:
    return FUNCTIONS[function]({**features, "salary": features["salary"] * salary_scale})


def test_loan_concepts_switch_exactly_at_the_onsets_and_the_labels_follow_them() -> None:
    s = make_stream("loan", "recurring", 3, N, noise=0.0)
    first, second = s.onsets
    assert set(s.concepts[:first]) == {2} and set(s.concepts[first:second]) == {7} and set(s.concepts[second:]) == {2}
    for features, label, concept in s:
        assert (label == APPROVE) == _loan_label(features, concept)
    after = s.features[first:second]
    assert mean(_loan_label(f, 2) != _loan_label(f, 7) for f in after) > 0.3  # the switch changes the concept

    g = make_stream("loan", "gradual", 3, N, noise=0.0)
    (d,) = g.drifts
    assert set(g.concepts[: d.onset]) == {2} and set(g.concepts[d.end :]) == {7}
    assert 0.3 < mean(c == 7 for c in g.concepts[d.onset : d.end]) < 0.7


def test_loan_incremental_drift_moves_the_labelling_salary_from_its_onset_on_and_keeps_the_inputs() -> None:
    s = make_stream("loan", "incremental", 3, N, noise=0.0)
    (d,) = s.drifts
    steps = max(s.concepts)
    assert set(s.concepts[: d.onset]) == {0} and s.concepts[d.onset] == 1 and s.concepts[-1] == steps
    for features, label, step in s:
        scale = streams._LOAN_INCREMENTAL_SCALE ** (step / steps)
        assert (label == APPROVE) == _loan_label(features, 2, scale)
    last = list(s)[-N // 4 :]
    assert mean((label == APPROVE) != _loan_label(f, 2) for f, label, _ in last) > 0.1
    # P(x) is unchanged: the model sees the salary as generated.
    stationary = make_stream("loan", "stationary", 3, N, noise=0.0)
    assert s.features == stationary.features


def test_loan_covariate_shift_moves_the_inputs_and_keeps_the_labelling_function() -> None:
    s = make_stream("loan", "covariate", 3, N, noise=0.0)
    (d,) = s.drifts
    assert not d.concept and set(s.concepts) == {2}
    for features, label, _ in s:
        assert (label == APPROVE) == _loan_label(features, 2)
    salary = [f["salary"] for f in s.features]
    assert mean(salary[d.onset :]) / mean(salary[: d.onset]) == pytest.approx(1.3, rel=0.05)


def _events(s: streams.Stream, lo: int, hi: int) -> list[tuple[Any, ...]]:
    return list(s)[lo:hi]


def test_river_switches_are_exact_and_a_recurring_concept_continues_its_own_generator() -> None:
    stationary = make_stream("hyperplane", "stationary", 4, N)
    sudden = make_stream("hyperplane", "sudden", 4, N)
    recurring = make_stream("hyperplane", "recurring", 4, N)
    onset = sudden.onsets[0]
    assert sudden.features[:onset] == stationary.features[:onset]
    assert sudden.features[onset] != stationary.features[onset]
    assert set(sudden.concepts[:onset]) == {0} and set(sudden.concepts[onset:]) == {1}
    first, second = recurring.onsets
    assert _events(recurring, 0, first) == _events(stationary, 0, first)
    b = [(f, y, 0) for f, y, _ in _events(recurring, first, second)]
    assert b == [(f, y, 0) for f, y, _ in _events(sudden, onset, onset + second - first)]
    assert _events(recurring, second, N) == _events(stationary, first, first + N - second)


def test_river_gradual_drift_share_is_small_before_the_onset_and_complete_after_the_width() -> None:
    s = make_stream("sea", "gradual", 5, 10_000)
    (d,) = s.drifts
    c = s.concepts
    assert mean(c[d.onset - d.width // 3 : d.onset]) < 0.02
    assert mean(c[d.end : d.end + d.width // 3]) > 0.98
    assert 0.4 < mean(c[d.onset : d.end]) < 0.6


def test_hyperplane_incremental_drift_starts_at_its_onset(monkeypatch: pytest.MonkeyPatch) -> None:
    # Pins river's Hyperplane: it reads mag_change at every step, after labelling and before yielding.
    monkeypatch.setattr(streams, "_HYPERPLANE_MAG_CHANGE", 0.5)
    s = make_stream("hyperplane", "incremental", 6, N, noise=0.0)
    stationary = make_stream("hyperplane", "stationary", 6, N, noise=0.0)
    (d,) = s.drifts
    assert s.features == stationary.features  # same generator, same draws: only the weights move
    assert s.labels[: d.onset] == stationary.labels[: d.onset]
    assert s.labels[d.onset : d.onset + 20] != stationary.labels[d.onset : d.onset + 20]
    assert s.concepts[d.onset - 1 : d.onset + 2] == [0, 1, 2]


def test_rbf_incremental_drift_moves_the_centroids_from_its_onset() -> None:
    s = make_stream("rbf", "incremental", 6, N)
    stationary = make_stream("rbf", "stationary", 6, N)
    (d,) = s.drifts
    assert s.features[: d.onset] == stationary.features[: d.onset]
    assert s.labels[: d.onset] == stationary.labels[: d.onset]
    assert s.features[d.onset] != stationary.features[d.onset]  # the first event drawn from moved centroids
    assert s.concepts[d.onset - 1 : d.onset + 2] == [0, 1, 2]


def test_rbf_labels_carry_the_stated_noise() -> None:
    clean, noisy = make_stream("rbf", "stationary", 3, N, noise=0.0), make_stream("rbf", "stationary", 3, N)
    assert clean.features == noisy.features
    assert 0.03 < mean(a != b for a, b in zip(clean.labels, noisy.labels, strict=True)) < 0.07


def _subsequence(part: list[Any], whole: Iterator[Any]) -> bool:
    return all(any(p == w for w in whole) for p in part)


def test_river_covariate_shift_keeps_the_labelling_function() -> None:
    s = make_stream("hyperplane", "covariate", 7, N)
    stationary = make_stream("hyperplane", "stationary", 7, 4 * N)
    (d,) = s.drifts
    assert not d.concept and set(s.concepts) == {0}
    assert _events(s, 0, d.onset) == _events(stationary, 0, d.onset)
    # After the onset the events are a selection of the same generator's: same P(y | x), other P(x).
    assert _subsequence(_events(s, d.onset, N), iter(_events(stationary, d.onset, 4 * N)))
    x0 = [f["x0"] for f in s.features]
    assert mean(x0[d.onset :]) > mean(x0[: d.onset]) + 0.1


def test_the_weather_stream_is_the_recorded_data_in_its_order_whatever_the_seed() -> None:
    a = make_stream("weather", "real", 1, 20_000)
    realdata._weather_rows.cache_clear()  # the second load reads the CSV again
    b = make_stream("weather", "real", 2, 20_000)
    assert len(a) == realdata.WEATHER_ROWS == 18_159
    assert len(a.feature_names) == 8 and all(len(f) == 8 for f in a.features)
    assert all(isinstance(v, float) for f in a.features for v in f.values())
    assert set(a.labels) == {0, 1}
    assert list(a) == list(b) and a.feature_names == b.feature_names and a.drifts == b.drifts == [Drift(12_000)]
    assert a.matrix().shape == (18_159, 8)
    assert streams.available("weather", "real") and not streams.available("weather", "sudden")
    assert not streams.available("loan", "real")


# ---------------------------------------------------------------------------------------------
# The simulator


class Memorizer:
    """Answers the true label only for events it was fitted on, else a code naming its fit's last
    event: served correctly <=> leaked, and each prediction says which model served it."""

    def fit(self, x: np.ndarray, y: np.ndarray) -> Memorizer:
        self.seen = dict(zip(x[:, 0].astype(int).tolist(), y.tolist(), strict=True))
        self.last = int(x[:, 0].max())
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray([self.seen.get(i, -(self.last + 2)) for i in x[:, 0].astype(int).tolist()])


def _info(n: int, drifts: list[Drift]) -> loop.StreamInfo:
    return loop.StreamInfo("test", "test", 0, n, ("index",), (0, 1), tuple(drifts))


@pytest.mark.parametrize("policy", loop.BASELINES)
@pytest.mark.parametrize("delay", [1, 37])
def test_a_model_never_serves_an_event_whose_label_it_was_trained_on(policy: str, delay: int) -> None:
    n = 3000
    x = np.arange(n, dtype=np.float64).reshape(n, 1)
    y = np.random.default_rng(0).integers(0, 2, n)
    config = loop.LoopConfig(label_delay=delay, window=400, cron_every=300, min_examples=100, predict_block=250)
    info = _info(n, [Drift(1200, 300), Drift(2000)])
    run = loop.simulate(x, y, info, loop.POLICIES[policy](loop.Trainer(Memorizer)), config)
    start = config.first_model_at
    assert (run.predictions[:start] == -1).all() and (run.versions[:start] == 0).all()
    assert not (run.predictions == y).any()  # no served event was in its model's training data
    served = [r for r in run.runs if r["served"]]
    assert served[0]["t"] == start and served[0]["first"] == 0 and served[0]["last"] == config.window - 1
    for r in run.runs:
        assert r["last"] == r["t"] - delay and r["last"] - r["first"] < config.window
    # Each event is served by the latest model fitted at or before it, whatever the prediction blocks.
    for t in range(start, n):
        serving = served[run.versions[t] - 1]
        assert serving["t"] <= t and run.predictions[t] == -(serving["last"] + 2)
    if policy in ("cron", "oracle"):
        assert len(served) > 2


def test_the_memorizer_would_catch_a_leak() -> None:
    n = 500
    x = np.arange(n, dtype=np.float64).reshape(n, 1)
    y = np.random.default_rng(0).integers(0, 2, n)
    assert (Memorizer().fit(x, y).predict(x) == y).all()


def test_detection_metrics_count_delay_in_labels_and_alarms_before_the_first_onset() -> None:
    n = 1000
    config = loop.LoopConfig(label_delay=10, window=100, cron_every=100)
    run = loop.Run("adwin", np.zeros(n, dtype=np.int64), np.ones(n, dtype=np.int64), [{}, {}, {}], [150, 420, 460])
    m = loop.metrics(run, np.zeros(n, dtype=np.int64), _info(n, [Drift(400), Drift(700)]), config)
    assert m["false_alarms"] == 1 and m["alarms"] == 3
    assert m["delays"] == [21, None] and m["missed"] == 1
    assert m["retrains"] == 2 and m["runs_per_episode"] == 1.0
    assert m["accuracy"] == 1.0
