"""The detectors on plain data: KS thresholds, the Page-Hinkley guard, the page."""

from __future__ import annotations

import numpy as np
from scipy import stats

from driftline.project import load_project
from driftline_ml.profiles import build_profiles
from driftline_monitoring.drift import PerformanceTracker, input_tests
from driftline_monitoring.page import render

POLICY = load_project().drift


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
