"""PSI against a small reference: sampling noise alone must not read as drift, a real shift must."""

from __future__ import annotations

import numpy as np

from driftline.project import load_project
from driftline_ml.profiles import build_profiles, numeric_profile, psi
from driftline_monitoring.drift import input_tests, psi_noise_bound, psi_threshold, score_tests

POLICY = load_project().drift


def scores(rng: np.random.Generator, n: int, shift: float = 0.0) -> np.ndarray:
    """Positive-class scores of a confident classifier: most near 0 or 1."""
    positive = rng.random(n) < 0.45 + shift
    return np.where(positive, rng.beta(8, 1, n), rng.beta(1, 8, n))


def score_psi_alarm(profile: dict, window: np.ndarray) -> bool:
    (psi_evidence,) = [e for e in score_tests(profile, window.tolist(), POLICY) if e.method == "score_psi"]
    return psi_evidence.drifted


def test_the_noise_bound_shrinks_with_the_samples() -> None:
    assert (
        psi_noise_bound(1e-4, 10, 75, 500) > psi_noise_bound(1e-4, 10, 300, 500) > psi_noise_bound(1e-4, 10, 5000, 500)
    )
    assert psi_noise_bound(1e-4, 10, 75, 500) > POLICY.psi_threshold > psi_noise_bound(1e-4, 10, 5000, 500)


def test_a_stationary_window_against_a_small_reference_raises_no_psi_alarm() -> None:
    rng = np.random.default_rng(3)
    plain, alarms, trials = 0, 0, 200
    for _ in range(trials):
        # A holdout of 50 scores: a model retrained on the 200 examples seen since a drift.
        profile = numeric_profile(scores(rng, 50))
        window = scores(rng, POLICY.window)
        plain += psi(profile, window.tolist()) > POLICY.psi_threshold
        alarms += score_psi_alarm(profile, window)
    # Noise alone passes the plain threshold in about one check in five (one every 100 records).
    assert plain > trials // 10, "the scenario does exercise noise above the plain threshold"
    assert alarms <= 1


def test_a_real_shift_against_a_small_reference_still_alarms() -> None:
    rng = np.random.default_rng(4)
    hits = sum(
        score_psi_alarm(numeric_profile(scores(rng, 75)), scores(rng, POLICY.window, shift=0.45)) for _ in range(50)
    )
    assert hits >= 45


def test_a_large_reference_keeps_the_policy_threshold() -> None:
    rng = np.random.default_rng(5)
    profile = numeric_profile(scores(rng, 5000))
    (e,) = [e for e in score_tests(profile, scores(rng, POLICY.window).tolist(), POLICY) if e.method == "score_psi"]
    assert e.threshold == POLICY.psi_threshold and not e.drifted


def small_reference_with_categoricals(rng: np.random.Generator) -> tuple[dict, dict[str, list]]:
    """Two numeric and three categorical features against a reference of 60 records (noise bound
    above the policy threshold), and a stationary window with some missing categories."""
    n, m = 60, POLICY.window
    reference = np.column_stack([rng.normal(size=n), rng.normal(size=n), *(rng.integers(0, 5, n) for _ in range(3))])
    names = ["a", "b", "c1", "c2", "c3"]
    profiles = build_profiles(reference.astype(float), names, categorical=names[2:])
    window: dict[str, list] = {"a": list(rng.normal(size=m)), "b": list(rng.normal(size=m))}
    for name in names[2:]:
        values: list = [float(x) for x in rng.integers(0, 5, m)]
        for i in range(0, m, 4):  # a quarter missing: NaN (a float column) or None
            values[i] = float("nan") if i % 8 else None
        window[name] = values
    return profiles, window


def test_the_psi_noise_bound_uses_the_level_of_every_feature_psi_tests() -> None:
    profiles, window = small_reference_with_categoricals(np.random.default_rng(6))
    level = POLICY.ks_p_value / 5  # PSI runs on all five features, not only the two numeric ones
    for e in input_tests(profiles, window, POLICY):
        if e.method != "psi":
            continue
        values = window[e.feature]
        m = sum(v is not None and not (isinstance(v, float) and np.isnan(v)) for v in values)  # as psi() counts
        assert m < len(values) if e.feature.startswith("c") else m == len(values)
        assert e.threshold == psi_threshold(POLICY, profiles[e.feature], m, level) > POLICY.psi_threshold
    ks = [e for e in input_tests(profiles, window, POLICY) if e.method == "ks"]
    assert [e.feature for e in ks] == ["a", "b"]  # KS runs on the numeric features, at their own level
    assert all(e.drifted == (e.p_value is not None and e.p_value < POLICY.ks_p_value / 2) for e in ks)


def test_small_references_with_categoricals_raise_no_false_psi_alarm() -> None:
    rng = np.random.default_rng(7)
    alarms = sum(
        any(e.drifted for e in input_tests(*small_reference_with_categoricals(rng), POLICY) if e.method == "psi")
        for _ in range(100)
    )
    assert alarms <= 1
