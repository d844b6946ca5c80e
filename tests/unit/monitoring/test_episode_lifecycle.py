"""The drift episode's lifecycle (pure, no I/O): further attempts while served performance stays
degraded, consolidation after a promotion on few post-drift examples, and resolution only once
performance is back."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from driftline.project import DriftPolicy, load_project
from driftline_monitoring.drift import PERFORMANCE, CheckResult, Detection, ModelMonitor, PerformanceTracker, Reference
from driftline_monitoring.lifecycle import (
    CONSOLIDATION,
    RECENT,
    REFRESH,
    STILL_DEGRADED,
    Attempt,
    Episode,
    refresh_gained,
)

POLICY = load_project().drift


def reference(
    version: int = 1, accuracy: float = 0.95, examples: int | None = 3000, episode: str | None = None
) -> Reference:
    return Reference("m", version, {}, None, accuracy, "1", f"p{version}", examples=examples, episode_id=episode)


def clean_check(n: int) -> CheckResult:
    return CheckResult(n, (0, n, n), [], [], 0, {}, None)


def feed(
    monitor: ModelMonitor, n: int, error_rate: float, start: int, seed: int = 0, *, runs_report: bool = True
) -> list[tuple[int, object]]:
    """``n`` joined outcomes at the given error rate; the attempts they made (taken as Episodes
    does). With ``runs_report``, each attempt's run reports its outcome at once (a fast run)."""
    rng = np.random.default_rng(seed)
    made = []
    for i, wrong in enumerate(rng.random(n) < error_rate):
        t = start + i
        monitor.predictions.put(str(t), ("a", t))
        monitor.add_label(str(t), "b" if wrong else "a")
        if runs_report and monitor.episode is not None:
            monitor.episode.outcome()
        attempt = monitor.due_attempt()
        if attempt is not None and monitor.episode is not None:
            monitor.episode.took(attempt)
            made.append((t, attempt))
    return made


def performance_detection(t: int) -> Detection:
    return Detection(PERFORMANCE, "adwin", 0.3, 0.1, [], [], 0, t, 300)


def test_a_degraded_episode_asks_again_with_growing_spacing_up_to_its_cap() -> None:
    monitor = ModelMonitor(reference(), POLICY, max_examples=4000)
    feed(monitor, 400, 0.05, 0)
    episode = monitor.open("e", monitor.with_onset(performance_detection(400)))
    made = feed(monitor, 6000, 0.45, 400)
    assert [a.number for _, a in made] == list(range(2, POLICY.max_attempts + 1))
    assert {a.reason for _, a in made} == {STILL_DEGRADED}
    gaps = np.diff([t for t, _ in made])  # one labelled outcome per t
    for k, gap in enumerate(gaps, start=3):
        assert gap >= math.ceil(POLICY.retry_after_labels * POLICY.retry_growth ** (k - 2))
    assert episode.exhausted(POLICY)
    ended = monitor.after_check(clean_check(6400))
    assert ended is not None and ended[1] == "attempts_exhausted" and monitor.episode is None


def test_an_input_episode_without_degradation_asks_only_as_its_post_drift_set_grows() -> None:
    monitor = ModelMonitor(reference(accuracy=0.9), POLICY, max_examples=4000)
    feed(monitor, 400, 0.1, 0)
    episode = monitor.open("e", Detection("input", "psi", 0.5, 0.25, ["x"], [], 0, 400, 600))  # a covariate shift
    # Labels flow and accuracy is as its reference: nothing to retry. The inputs stay shifted, so
    # the post-drift set grows as for a consolidation: a candidate fitted on more of the new inputs
    # may yet beat the champion there (the registry decides).
    made = feed(monitor, 4000, 0.1, 400)
    first = episode.first_examples
    assert first >= monitor.min_examples
    targets = [min(math.ceil(POLICY.consolidate_factor * first), 4000)]
    targets.append(min(math.ceil(POLICY.consolidate_factor * targets[0]), 4000))
    assert [(a.reason, a.labelled_since_onset) for _, a in made] == [(CONSOLIDATION, t) for t in targets][: len(made)]
    assert made


def test_a_promotion_in_the_episode_is_consolidated_as_the_post_drift_set_grows_and_then_resolves() -> None:
    old = ModelMonitor(reference(), POLICY, max_examples=4000)
    feed(old, 400, 0.05, 0)
    episode = old.open("e", old.with_onset(performance_detection(400)))
    feed(old, 250, 0.45, 400)
    # The emergency run trained on 250 post-drift examples and was promoted: the new champion inherits.
    new = ModelMonitor(reference(2, accuracy=0.9, examples=250, episode="e"), POLICY, max_examples=4000)
    new.carry(old.episode)
    assert new.episode is episode and episode.promoted_examples == 250
    target = episode.consolidation_target(POLICY, 4000)
    assert target == min(math.ceil(POLICY.consolidate_factor * 250), 4000)
    # Performance is back at once, but the episode stays open until the consolidation run is asked.
    made = feed(new, 400, 0.1, 650)
    for k in range(new.resolve_after + 1):
        assert new.after_check(clean_check(k)) is None
    made += feed(new, target, 0.1, 1050)
    assert [(a.number, a.reason) for _, a in made] == [(2, CONSOLIDATION)]
    assert made[0][1].labelled_since_onset == target
    # Rejected or not, the next consolidation waits for factor x as many again, up to the cap.
    second = episode.consolidation_target(POLICY, 4000)
    assert second == min(math.ceil(POLICY.consolidate_factor * target), 4000)
    assert new.after_check(clean_check(98)) is None  # still pending: the episode stays open
    made = feed(new, second - episode.labelled_since_onset, 0.1, 5000)
    assert [(a.number, a.reason, a.labelled_since_onset) for _, a in made] == [(3, CONSOLIDATION, second)]
    assert episode.consolidation_target(POLICY, 4000) is None  # at the cap: done
    assert new.after_check(clean_check(99)) == (episode, "back_to_normal") and new.episode is None


def test_an_episode_does_not_resolve_before_the_new_champions_performance_is_known() -> None:
    monitor = ModelMonitor(reference(), POLICY, max_examples=4000)
    feed(monitor, 400, 0.05, 0)
    episode = monitor.open("e", monitor.with_onset(performance_detection(400)))
    new = ModelMonitor(reference(2, episode="other"), POLICY, max_examples=4000)
    new.carry(episode)
    feed(new, POLICY.min_labels - 1, 0.05, 1000)
    assert all(new.after_check(clean_check(k)) is None for k in range(2 * new.resolve_after))
    feed(new, 1, 0.0, 2000)
    ended = [new.after_check(clean_check(k)) for k in range(new.resolve_after)]
    assert ended[-1] == (episode, "back_to_normal")


def test_a_performance_detection_moves_an_input_episodes_onset_to_the_error_change_point() -> None:
    monitor = ModelMonitor(reference(), POLICY, max_examples=4000)
    feed(monitor, 300, 0.05, 0)
    episode = monitor.open("e", Detection("input", "psi", 0.5, 0.25, ["x"], [], 0, 300, 600))
    assert episode.onset_ms == 0 and not episode.performance_onset
    feed(monitor, 150, 0.5, 300, seed=1)  # the outcome window (300) now spans the change
    assert not monitor.should_open(performance_detection(450))
    assert episode.performance_onset and abs((episode.onset_ms or 0) - 300) < 60
    assert episode.labelled_since_onset == monitor.performance.outcomes_since(episode.onset_ms or 0)


def test_adwin_raises_on_a_rising_error_rate_and_not_on_a_falling_one() -> None:
    policy = DriftPolicy.model_validate({**POLICY.model_dump(), "detectors": ["adwin"]})
    rng = np.random.default_rng(5)
    rising = PerformanceTracker(policy, reference_accuracy=0.9)
    errors = np.concatenate([rng.random(1000) < 0.1, rng.random(1000) < 0.4])
    first = next((t for t, wrong in enumerate(errors) if rising.add(t, not wrong) is not None), None)
    assert first is not None and 1000 <= first < 1300
    falling = PerformanceTracker(policy, reference_accuracy=0.9)
    errors = np.concatenate([rng.random(1000) < 0.4, rng.random(1000) < 0.1])
    for t, wrong in enumerate(errors):
        detection = falling.add(t, not wrong)
        assert detection is None or detection.method == "accuracy_drop"  # the level, not an ADWIN alarm
    assert falling.adwin_changes > 0  # ADWIN saw the change: a fall
    assert falling.adwin_alarms == 0  # is not a drift to retrain on


def test_no_attempt_while_the_last_attempts_run_has_not_reported_for_at_most_a_few_spacings() -> None:
    from driftline_monitoring.lifecycle import AWAIT_SPACINGS

    monitor = ModelMonitor(reference(), POLICY, max_examples=4000)
    feed(monitor, 400, 0.05, 0)
    episode = monitor.open("e", monitor.with_onset(performance_detection(400)))
    # A slow run: no outcome. The retry that one spacing would allow waits.
    made = feed(monitor, 2 * POLICY.retry_after_labels, 0.45, 400, runs_report=False)
    assert made == [] and episode.waiting_for_outcome(POLICY)
    # Its outcome comes (the candidate was rejected): the retry is due at the next outcome.
    episode.outcome()
    (first,) = feed(monitor, 1, 0.45, 400 + 2 * POLICY.retry_after_labels, runs_report=False)
    assert first[1].number == 2  # type: ignore[attr-defined]
    # A run that never reports (held by training's cooldown) stops the episode for a bounded time.
    spacing = episode.retry_spacing(POLICY)
    made = feed(monitor, (AWAIT_SPACINGS + 1) * spacing, 0.45, 2000, runs_report=False)
    assert [a.number for _, a in made] == [3]  # type: ignore[attr-defined]
    assert made[0][0] - 2000 >= AWAIT_SPACINGS * spacing - 1


def test_episode_spacing_is_in_labelled_outcomes() -> None:
    e = Episode("e", PERFORMANCE)
    assert e.retry_spacing(POLICY) == POLICY.retry_after_labels
    e.attempts = 3
    assert e.retry_spacing(POLICY) == math.ceil(POLICY.retry_after_labels * POLICY.retry_growth**2)


def test_a_gradual_change_moves_the_next_attempts_onset_to_where_errors_rose() -> None:
    monitor = ModelMonitor(reference(), POLICY, max_examples=4000)
    feed(monitor, 400, 0.05, 0)
    # The alarm comes early in a transition; the error rate climbs from 5 % to 45 % over 1,500 outcomes.
    episode = monitor.open("e", Detection(PERFORMANCE, "adwin", 0.3, 0.1, [], [], 0, 400, 300, onset_ms=400))
    rng = np.random.default_rng(9)
    onsets = []
    for i in range(1500):
        t = 400 + i
        monitor.predictions.put(str(t), ("a", t))
        monitor.add_label(str(t), "b" if rng.random() < 0.05 + 0.4 * i / 1500 else "a")
        episode.outcome()  # each attempt's run reports at once
        attempt = monitor.due_attempt()
        if attempt is not None:
            episode.took(attempt)
            onsets.append(attempt.onset_ms)
    # Early attempts see too little of the climb to move it; later ones train on what came after
    # the errors rose (never going back).
    assert len(onsets) >= 2 and onsets == sorted(onsets) and onsets[-1] > 400, onsets
    assert episode.onset_ms == onsets[-1]


def test_a_stationary_error_stream_keeps_the_onset() -> None:
    episode = Episode("e", PERFORMANCE, onset_ms=0)
    rng = np.random.default_rng(4)
    for t, wrong in enumerate(rng.random(3000) < 0.3):
        episode.count_outcome(t, not wrong)
    assert episode.moved_onset() == 0


REFRESHING = POLICY.model_copy(update={"refresh_fraction": 0.5})  # the shipped policy's value
OFF = POLICY.model_copy(update={"refresh_fraction": 0.0})


def test_a_slow_change_refreshes_on_the_whole_window_while_promoted_and_stops_after_two_misses() -> None:
    """A promoted run that chose the recent window (older examples than the onset helped: the
    change is slow) starts a refresh chain: no consolidation, a run every refresh_fraction x
    max_examples new labels on the whole selection (no onset), the spacing doubled after a run that
    was not promoted, and the chain ended by a second one in a row."""
    cap = 4000
    spacing = math.ceil(REFRESHING.refresh_fraction * cap)
    monitor = ModelMonitor(reference(), REFRESHING, max_examples=cap)
    feed(monitor, 400, 0.05, 0)
    episode = monitor.open("e", monitor.with_onset(performance_detection(400)))
    feed(monitor, 300, 0.45, 400)
    version, t = 2, 700

    def promote(window: str | None, share: float | None = None) -> ModelMonitor:
        nonlocal version
        ref = replace(
            reference(version, accuracy=0.9, examples=3000, episode="e"), window=window, since_onset_share=share
        )
        new = ModelMonitor(ref, REFRESHING, max_examples=cap)
        new.carry(episode)
        version += 1
        return new

    monitor = promote(RECENT, 0.1)
    assert episode.slow_change
    assert episode.consolidation_target(REFRESHING, cap) is None  # it trained on the whole selection
    due = episode.refresh_target(REFRESHING, cap)
    assert due == episode.labelled_at_attempt + spacing
    for k in range(monitor.resolve_after + 1):  # a pending refresh keeps the episode open
        assert monitor.after_check(clean_check(k)) is None
    made = feed(monitor, spacing, 0.1, t, runs_report=False)
    t += spacing
    assert [(a.reason, a.onset_ms, a.labelled_since_onset) for _, a in made] == [(REFRESH, None, due)]
    # Promoted (a run asked without an onset makes no window choice: the chain goes on).
    monitor = promote(None)
    assert episode.slow_change
    assert episode.refresh_target(REFRESHING, cap) == due + spacing
    made = feed(monitor, spacing, 0.1, t, runs_report=False)
    t += spacing
    assert [a.labelled_since_onset for _, a in made] == [due + spacing]
    # Not promoted: one more, twice as far.
    episode.outcome()
    assert episode.refresh_target(REFRESHING, cap) == due + 3 * spacing
    made = feed(monitor, 2 * spacing, 0.1, t, runs_report=False)
    t += 2 * spacing
    assert [a.labelled_since_onset for _, a in made] == [due + 3 * spacing]
    # Not promoted again: the chain ends and the episode resolves.
    episode.outcome()
    assert episode.refresh_target(REFRESHING, cap) is None
    assert feed(monitor, 2 * spacing, 0.1, t) == []
    ends = [monitor.after_check(clean_check(200 + k)) for k in range(monitor.resolve_after)]
    assert ends[-1] == (episode, "back_to_normal") and ends[:-1] == [None] * (monitor.resolve_after - 1)


def test_a_change_learnt_since_its_onset_consolidates_and_never_refreshes() -> None:
    """A sudden change: its runs chose the examples since the onset, had no older ones to choose from,
    or chose the whole selection when nearly all of it was after the onset (the two windows are then
    nearly the same); consolidation grows them to the cap and no refresh follows."""
    for window, share in (("since_onset", 0.1), (None, None), (RECENT, 0.9)):
        ref = replace(reference(2, examples=300, episode="e"), window=window, since_onset_share=share)
        assert not ref.slow_change
        monitor = ModelMonitor(ref, REFRESHING, max_examples=4000)
        episode = Episode("e", PERFORMANCE, attempts=1)
        monitor.carry(episode)
        assert not episode.slow_change
        assert episode.consolidation_target(REFRESHING, 4000) == 1200
        episode.consolidated_to, episode.attempts, episode.promoted_attempt = 4000, 3, 3
        assert episode.consolidation_target(REFRESHING, 4000) is None
        assert episode.refresh_target(REFRESHING, 4000) is None


def test_no_refresh_when_it_is_off_and_then_a_recent_window_consolidates_as_before() -> None:
    episode = Episode("e", PERFORMANCE, promoted_examples=3000, attempts=1, promoted_attempt=1, slow_change=True)
    assert episode.refresh_target(REFRESHING, 4000) is not None
    assert episode.refresh_target(REFRESHING, None) is None  # no cap known: no spacing
    off = OFF
    assert off.refresh_fraction == 0
    assert episode.refresh_target(off, 4000) is None
    assert episode.consolidation_target(off, 4000) == 4000


def test_the_reference_knows_the_window_its_run_chose_and_whether_that_shows_a_slow_change() -> None:
    base = {"metrics": {"accuracy": 0.9}, "n_train": 3, "n_holdout": 1}
    chosen = {"selection": {"window": {"chosen": "recent", "since_onset": 10, "recent": 40}}}
    ref = Reference.from_metadata("m", 1, base | chosen, "e")
    assert (ref.window, ref.since_onset_share, ref.slow_change) == (RECENT, 0.25, True)
    assert Reference.from_metadata("m", 1, base | {"selection": {"window": None}}, "e").window is None
    assert Reference.from_metadata("m", 1, base, "e").window is None


def test_an_episode_shown_slow_stays_slow_when_a_later_run_chooses_the_examples_since_the_onset() -> None:
    """A still-degraded retry of a slow episode may choose the examples since its (moved) onset; the
    boundary still moves, so the chain goes on from that promotion."""
    episode = Episode("e", PERFORMANCE, attempts=1)
    for version, (window, share) in enumerate(((RECENT, 0.2), ("since_onset", 0.6)), start=2):
        ref = replace(reference(version, examples=3000, episode="e"), window=window, since_onset_share=share)
        ModelMonitor(ref, REFRESHING, max_examples=4000).carry(episode)
        assert episode.slow_change
        assert episode.refresh_target(REFRESHING, 4000) == episode.labelled_at_attempt + 2000
        episode.attempts += 1


def test_a_moved_onset_starts_consolidation_again_from_the_new_onset() -> None:
    """A long episode consolidated up to the cap counted from its first onset; an attempt that moves
    the onset (the errors rose later) leaves few examples after it, so the model promoted from that
    attempt is consolidated again as the set after the new onset grows."""
    episode = Episode("e", PERFORMANCE, onset_ms=0, attempts=3, consolidated_to=4000, promoted_examples=300)
    for t in range(5000):
        episode.count_outcome(t, t < 4000)
    assert episode.consolidation_target(POLICY, 4000) is None  # at the cap, counted from 0
    episode.took(Attempt(4, STILL_DEGRADED, 4700, episode.labelled_since_onset, 0.3, 0.1))
    assert (episode.onset_ms, episode.labelled_since_onset, episode.consolidated_to) == (4700, 300, 0)
    target = episode.consolidation_target(POLICY, 4000)  # the run of attempt 4, once promoted: 300 examples
    assert target == min(math.ceil(POLICY.consolidate_factor * 300), 4000)


def test_a_refresh_gains_when_it_beats_its_champion_beyond_the_bound() -> None:
    assert refresh_gained(30, 15, 0.75)  # 15 > 0.674 * sqrt(45) = 4.5
    assert not refresh_gained(22, 20, 0.75)  # 2 < 0.674 * sqrt(42) = 4.4: within the noise
    assert refresh_gained(22, 20, 0.5) and not refresh_gained(20, 20, 0.5)  # z = 0: better at all
    assert not refresh_gained(0, 0, 0.5) and not refresh_gained(10, 20, 0.75)


def test_a_refresh_promoted_within_the_noise_is_a_miss_of_its_chain() -> None:
    """With promotion.refresh_confidence the registry promotes a refresh that is merely not worse;
    the chain goes on at its spacing only after one that gained (refresh_gained), so two refreshes
    in a row that the boundary did not need end it, promoted or not."""
    cap, policy = 4000, REFRESHING
    spacing = math.ceil(policy.refresh_fraction * cap)
    episode = Episode("e", PERFORMANCE, onset_ms=0, attempts=2)
    slow = replace(reference(2, examples=3000, episode="e"), window=RECENT, since_onset_share=0.2)
    ModelMonitor(slow, policy, max_examples=cap, refresh_confidence=0.75).carry(episode)
    assert episode.promoted_attempt == 2 and episode.refresh_target(policy, cap) == spacing

    def refreshed(version: int, wins: int, losses: int, confidence: float = 0.75) -> int | None:
        episode.attempts += 1  # the refresh went out ...
        ref = replace(reference(version, examples=3000, episode="e"), refresh=True, wins=wins, losses=losses)
        ModelMonitor(ref, policy, max_examples=cap, refresh_confidence=confidence).carry(episode)  # ... promoted
        return episode.refresh_target(policy, cap)

    assert refreshed(3, 30, 15) == spacing  # a gain: the chain goes on at its spacing
    assert episode.promoted_attempt == 3
    assert refreshed(4, 22, 20) == 2 * spacing  # within the noise: a miss, twice the spacing
    assert episode.promoted_attempt == 3 and not episode.awaiting  # the run reported all the same
    assert refreshed(5, 21, 20) is None  # a second miss in a row ends the chain
    # Off (refresh_confidence 0): every promotion goes on with the chain, as before.
    episode.attempts, episode.promoted_attempt = 2, 2
    assert refreshed(6, 21, 20, confidence=0.0) == spacing


def test_the_reference_knows_a_refresh_and_its_runs_paired_counts() -> None:
    base = {"metrics": {"accuracy": 0.9}, "n_train": 3, "n_holdout": 1}
    ref = Reference.from_metadata("m", 1, base | {"refresh": True, "comparison": {"wins": 7, "losses": 4}}, "e")
    assert (ref.refresh, ref.wins, ref.losses) == (True, 7, 4)
    old = Reference.from_metadata("m", 1, base | {"comparison": None}, "e")  # before refreshes were marked
    assert (old.refresh, old.wins, old.losses) == (False, None, None)


def test_a_living_refresh_chain_keeps_its_episode_from_being_exhausted() -> None:
    """Every attempt made and still degraded: the episode gives up, unless its refresh chain lives
    at its spacing (the last attempt's run was promoted, so its next refresh is scheduled); after a
    miss it gives up as before, and a later detection opens a new episode."""
    cap, policy = 4000, REFRESHING
    episode = Episode("e", PERFORMANCE, onset_ms=0, attempts=policy.max_attempts)
    slow = replace(reference(2, examples=3000, episode="e"), window=RECENT, since_onset_share=0.2)
    ModelMonitor(slow, policy, max_examples=cap).carry(episode)
    episode.labelled_since_onset = episode.labelled_at_attempt + episode.retry_spacing(policy)
    assert episode.refresh_target(policy, cap) is not None
    assert not episode.exhausted(policy, cap)
    assert episode.exhausted(OFF, cap)  # refreshing off: exhausted as before
    episode.attempts += 1  # an attempt not promoted: the chain waits twice as long, the episode gives up
    episode.labelled_since_onset += episode.retry_spacing(policy)
    assert episode.refresh_target(policy, cap) is not None and episode.exhausted(policy, cap)
    episode.attempts += 1  # a second one: the chain ended
    episode.labelled_since_onset += episode.retry_spacing(policy)
    assert episode.refresh_target(policy, cap) is None and episode.exhausted(policy, cap)
