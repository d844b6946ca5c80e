"""The detectors on plain data: KS thresholds, the Page-Hinkley guard (and the river internals it
reads), the page."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from driftline.project import load_project
from driftline_ml.profiles import build_profiles
from driftline_monitoring.drift import PerformanceTracker, input_tests
from driftline_monitoring.page import render

POLICY = load_project().drift
ADWIN_ONLY = POLICY.model_copy(update={"detectors": ["adwin"]})


def test_ks_evidence_reads_statistic_over_the_critical_distance_at_the_bonferroni_level() -> None:
    rng = np.random.default_rng(1)
    reference = rng.normal(0, 1, size=(4000, 3))
    profiles = build_profiles(reference, ["a", "b", "c"])
    window = rng.normal(0, 1, size=(600, 3))
    window[:, 1] += 0.4  # b moved
    evidence = input_tests(profiles, {f: list(window[:, j]) for j, f in enumerate("abc")}, POLICY)
    ks = {e.feature: e for e in evidence if e.method == "ks"}
    level = POLICY.ks_p_value / 3
    n_eff = round(4000 * 600 / 4600)
    for e in ks.values():
        assert e.threshold == stats.kstwo.isf(level, n_eff)
        assert e.drifted == (e.p_value is not None and e.p_value < level) == (e.statistic > e.threshold)
    assert [f for f, e in ks.items() if e.drifted] == ["b"]
    psi = {e.feature: e for e in evidence if e.method == "psi"}
    assert psi["b"].statistic > psi["a"].statistic and psi["b"].statistic > psi["c"].statistic


def test_the_guard_keeps_page_hinkley_quiet_on_a_noisy_but_stationary_error_stream() -> None:
    raw_alarms = 0
    for seed in range(8):
        rng = np.random.default_rng(seed)
        tracker = PerformanceTracker(POLICY, reference_accuracy=0.75)
        for t, wrong in enumerate(rng.random(3000) < 0.25):
            assert tracker.add(t, not wrong) is None, f"seed {seed}: false alarm at outcome {t}"
        raw_alarms += tracker.ph_alarms
    assert raw_alarms > 0  # Page-Hinkley alone would have alarmed on this noise


def test_a_rising_error_rate_is_detected_within_a_few_hundred_outcomes() -> None:
    rng = np.random.default_rng(3)
    tracker = PerformanceTracker(POLICY, reference_accuracy=0.9)
    errors = np.concatenate([rng.random(1000) < 0.1, rng.random(1000) < 0.4])
    first = None
    for t, wrong in enumerate(errors):
        detection = tracker.add(t, not wrong)
        if detection is not None:
            first, onset = (t, detection), tracker.change_point_ms()  # as when it is published
            break
    assert first is not None and 1000 <= first[0] < 1300
    # The change-point estimate lands near the true change (1000), inside the window, before the alarm.
    assert first[1].window_start_ms <= onset <= first[0]
    assert abs(onset - 1000) < 120, onset


def test_a_sudden_rise_counts_at_adwins_own_alarm() -> None:
    """Error 3 % -> 15 % under a reference of 95 %: when ADWIN fires, the rolling window still mixes
    both regimes and its drop is under three standard errors, but the outcomes after its most
    likely change point are clearly below the reference, so the alarm counts then, not later."""
    from river.drift import ADWIN

    at_adwins_alarm = 0
    for seed in range(10):
        rng = np.random.default_rng(seed)
        errors = np.concatenate([rng.random(2000) < 0.03, rng.random(2000) < 0.15])
        bare: ADWIN = ADWIN(delta=POLICY.adwin_delta)
        adwin_at = next(t for t, wrong in enumerate(errors) if bare.update(float(wrong)) or bare.drift_detected)
        assert adwin_at >= 2000
        tracker = PerformanceTracker(ADWIN_ONLY, reference_accuracy=0.95)
        detected = next((t for t, wrong in enumerate(errors) if tracker.add(t, not wrong) is not None), None)
        assert detected is not None and detected >= adwin_at, (seed, detected, adwin_at)
        at_adwins_alarm += detected == adwin_at
    assert at_adwins_alarm >= 9  # with the rolling window's drop alone: 2 of 10


def test_adwin_on_a_stream_at_its_reference_accuracy_never_counts() -> None:
    for seed in range(8):
        rng = np.random.default_rng(100 + seed)
        tracker = PerformanceTracker(ADWIN_ONLY, reference_accuracy=0.9)
        for t, wrong in enumerate(rng.random(6000) < 0.1):
            assert tracker.add(t, not wrong) is None, f"seed {seed}: false alarm at outcome {t}"


def test_the_page_plots_psi_per_feature_and_escapes_names() -> None:
    summaries = [
        {
            "model_version": 1,
            "features": {"salary": {"psi": 0.01 * i}, "<age>": {"psi": 0.02}},
            "score": {"psi": 0.03},
            "performance": {"accuracy": 0.9, "reference_accuracy": 0.95},
        }
        for i in range(5)
    ]
    html = render([("m", summaries)], [], psi_threshold=0.25, accuracy_drop=0.12)
    assert html.count("<svg") == 2 and "salary" in html and "&lt;age&gt;" in html and "<age>" not in html
    assert "stroke-dasharray" in html  # the threshold line
    assert "not enough checks" in render([("m", summaries[:1])], [], psi_threshold=0.25, accuracy_drop=0.12)


def test_input_drift_watches_only_the_models_inputs() -> None:
    from driftline_monitoring.drift import Reference

    profiles = build_profiles(np.random.default_rng(0).normal(size=(100, 3)), ["a", "b", "windowed_count"])
    metadata = {
        "reference_profile": {"features": profiles, "score": None},
        "feature_names": ["a", "b"],
        "metrics": {"accuracy": 0.9},
        "positive_class": "approve",
    }
    reference = Reference.from_metadata("m", 1, metadata, "e")
    assert set(reference.profiles) == {"a", "b"}


def test_the_page_hinkley_statistic_pins_rivers_private_sums() -> None:
    """river has no public accessor for the Page-Hinkley statistic, so ``ph_statistic`` reads its
    private ``_sum_increase`` and ``_min_increase``. This recomputes river's one-sided test
    independently: it fails when an upgrade renames those attributes or changes their meaning."""
    tracker = PerformanceTracker(POLICY, reference_accuracy=0.9)
    ph = tracker.ph
    assert hasattr(ph, "_sum_increase") and hasattr(ph, "_min_increase"), "river renamed PageHinkley's sums"
    rng = np.random.default_rng(5)
    errors = np.concatenate([rng.random(600) < 0.1, rng.random(600) < 0.5])
    n, mean, total, low, reset, alarms = 0, 0.0, 0.0, math.inf, False, 0
    for t, wrong in enumerate(errors):
        if reset:  # river resets at the update after an alarm
            n, mean, total, low, reset = 0, 0.0, 0.0, math.inf, False
        x = 1.0 if wrong else 0.0
        n += 1
        mean += (x - mean) / n
        total = ph.alpha * total + (x - mean) - ph.delta
        low = min(low, total)
        tracker.add(t, not wrong)
        assert tracker.ph_statistic() == pytest.approx(total - low, rel=1e-9, abs=1e-9), t
        alarm = n >= ph.min_instances and total - low > ph.threshold
        assert bool(ph.drift_detected) == alarm, t
        if alarm:
            alarms, reset = alarms + 1, True
    assert alarms >= 1  # the statistic was followed through an alarm and river's reset


def test_the_performance_summary_is_json_before_any_outcome() -> None:
    # river's running minimum starts at +inf: the statistic was -inf, which PostgreSQL's jsonb and
    # the JSON of GET /v1/drift reject, until the first label was joined.
    summary = PerformanceTracker(POLICY, reference_accuracy=0.9).summary()
    assert summary["page_hinkley"] == 0.0
    json.dumps(summary, allow_nan=False)
