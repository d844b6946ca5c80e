"""The drift episode's lifecycle, in labelled outcomes (pure, no I/O).

An episode opens at the first published detection of a model and stays open, across models, until
served performance is back (:meth:`driftline_monitoring.drift.ModelMonitor.after_check`). While it
is open it asks for training again (:meth:`Episode.next_attempt`): while the serving model stays
degraded (``retry_after_labels`` new labelled outcomes, growing by ``retry_growth``, up to
``max_attempts``), and to consolidate as the post-drift labelled set grows (``consolidate_factor``,
up to the training policy's ``max_examples``); with ``refresh_fraction``, a slow change (a promoted
run learnt better from its whole selection, most of it older than the onset) is refreshed instead
(:meth:`Episode.refresh_target`). A still-degraded retry's onset moves forward to where
the serving model's errors since the onset rose (:func:`change_point`), so a gradual change trains
on its new concept. See docs/architecture.md, "Drift episodes".
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from statistics import NormalDist

import numpy as np

from driftline.events import now_utc
from driftline.project import DriftPolicy

# 2 x the log-likelihood gain a split of an episode's error stream needs to move its onset: the
# gain is the maximum over every split, so it is far above chi-square(1) under "no change"; at 20
# a stationary error stream of a few thousand outcomes moves it about once in a thousand.
ONSET_MOVE_GAIN = 20.0


def change_point(outcomes: Sequence[tuple[int, bool]], margin: int = 10) -> tuple[int, float, bool]:
    """The split of a time-ordered outcome stream that maximises the Bernoulli log-likelihood of
    'one error rate before, another after': (event time of the first outcome after it, twice the
    log-likelihood gain over 'one rate throughout', whether the error rate rose there). O(n)."""
    times = [t for t, _ in outcomes]
    errors = np.fromiter((0.0 if ok else 1.0 for _, ok in outcomes), dtype=np.float64)
    n = errors.size
    if n < 2 * margin + 1:
        return (times[0] if times else 0), 0.0, False
    k = np.arange(margin, n - margin)
    before = np.cumsum(errors)[k - 1]
    after = errors.sum() - before

    def loglik(hits: np.ndarray, count: np.ndarray) -> np.ndarray:
        p = np.clip(hits / count, 1e-9, 1 - 1e-9)
        out: np.ndarray = hits * np.log(p) + (count - hits) * np.log(1 - p)
        return out

    score = loglik(before, k.astype(np.float64)) + loglik(after, (n - k).astype(np.float64))
    best = int(np.argmax(score))
    whole = float(loglik(np.asarray([errors.sum()]), np.asarray([float(n)]))[0])
    split = int(k[best])
    rose = after[best] / (n - split) > before[best] / split
    return times[split], 2.0 * (float(score[best]) - whole), bool(rose)


def refresh_gained(wins: int, losses: int, confidence: float) -> bool:
    """The refresh chain's own test: a promoted refresh's paired counts against the champion it
    replaced (``comparison.wins`` / ``losses`` of its run) show it better beyond z(confidence)
    standard errors (McNemar), i.e. the boundary is still moving and refreshing pays. With
    ``promotion.refresh_confidence`` the registry promotes a refresh that is merely not worse; such
    a refresh counts as a miss of the chain (:meth:`Episode.refresh_target`)."""
    if wins <= losses:
        return False
    return wins - losses > NormalDist().inv_cdf(confidence) * math.sqrt(wins + losses)


DETECTED, STILL_DEGRADED, CONSOLIDATION, REFRESH = "detected", "still_degraded", "consolidation", "refresh"
REFRESH_MISSES = 1  # a refresh chain survives this many unpromoted attempts in a row (spacing doubled)
RECENT = "recent"  # driftline_training.window's name for the whole selection (older than the onset too)
EPISODE_OUTCOMES = 5000  # outcomes an episode keeps to re-estimate its onset
# While the last attempt's run has no outcome yet (promoted, rejected or failed), the episode asks
# for nothing more, for at most this many retry spacings of labelled outcomes: a run that is slow
# (a busy host) must not see further requests queue behind it and use up the episode's attempts;
# an attempt that gets no run at all (held by training's cooldown) must not stop the episode.
AWAIT_SPACINGS = 4


@dataclass(frozen=True)
class Attempt:
    """A further request for training of an open episode (``DriftDetected.attempt`` > 1)."""

    number: int
    reason: str  # still_degraded | consolidation | refresh (a consolidation of a slow change: no onset)
    onset_ms: int | None
    labelled_since_onset: int
    statistic: float  # still_degraded: the accuracy drop; else the labelled outcomes since the onset
    threshold: float  # still_degraded: the guard it is beyond; else the target it reached


@dataclass
class Episode:
    """An open drift episode and its lifecycle (see :meth:`next_attempt`), in labelled outcomes.

    It spans models: a model promoted while it is open inherits it (:meth:`ModelMonitor.carry`),
    and it resolves only when served performance is back (:meth:`ModelMonitor.after_check`).
    """

    episode_id: str
    kind: str
    onset_ms: int | None = None
    attempts: int = 1  # requests for training so far (the opening detection is the first)
    labelled_since_onset: int = 0  # joined outcomes of events at or after the onset
    labelled_at_attempt: int = 0  # labelled_since_onset when the last attempt went out
    performance_onset: bool = False  # the onset is a performance change point
    # The serving model's outcomes since the onset (bounded): where its errors began, for the next
    # attempt's onset (see :meth:`next_attempt`).
    outcomes: deque[tuple[int, bool]] = field(default_factory=lambda: deque(maxlen=EPISODE_OUTCOMES))
    promoted_examples: int | None = None  # examples of the run promoted in this episode, if any
    # The attempt whose run was promoted last (0: none known); a refresh promoted without a gain
    # (refresh_gained) does not count: for the refresh chain it is a miss.
    promoted_attempt: int = 0
    slow_change: bool = False  # a run of the episode learnt from older examples: refresh (refresh_target)
    consolidated_to: int = 0  # the largest consolidation target asked for so far
    first_examples: int = 0  # labelled outcomes since the onset the first request could train on
    clean_checks: int = 0
    awaiting: bool = True  # the last attempt's run has not reported an outcome yet (see AWAIT_SPACINGS)
    seen_at: datetime | None = None  # last detection not yet written to the report (last_seen_at)
    written_at: float = -math.inf  # time.monotonic() of the last write of last_seen_at

    def seen(self) -> None:
        self.seen_at = now_utc()

    def count_outcome(self, event_time_ms: int, correct: bool) -> None:
        if self.onset_ms is None or event_time_ms >= self.onset_ms:
            self.labelled_since_onset += 1
            self.outcomes.append((event_time_ms, correct))

    def moved_onset(self) -> int | None:
        """Where the serving model's errors since the onset began to rise, when that is clearly
        later than the onset (a gradual or incremental change: the data before it is mostly the
        old concept); else the onset. Onsets only move forward."""
        if not self.outcomes:
            return self.onset_ms
        at, gain, rose = change_point(self.outcomes)
        if rose and gain > ONSET_MOVE_GAIN and (self.onset_ms is None or at > self.onset_ms):
            return at
        return self.onset_ms

    def outcome(self) -> None:
        """The last attempt's run reported (its model promoted or rejected, or the run failed)."""
        self.awaiting = False

    def waiting_for_outcome(self, policy: DriftPolicy) -> bool:
        """The last attempt's outcome is still awaited, within ``AWAIT_SPACINGS`` spacings."""
        waited = self.labelled_since_onset - self.labelled_at_attempt
        return self.awaiting and waited < AWAIT_SPACINGS * self.retry_spacing(policy)

    def retry_spacing(self, policy: DriftPolicy) -> int:
        """New labelled outcomes the next retry waits for: ``retry_after_labels``, growing by
        ``retry_growth`` with every attempt made."""
        return math.ceil(policy.retry_after_labels * policy.retry_growth ** max(0, self.attempts - 1))

    def consolidation_target(self, policy: DriftPolicy, max_examples: int | None) -> int | None:
        """Labelled outcomes since the onset at which the next consolidation run is due: the
        ``consolidate_factor`` multiple of the examples of the model promoted in the episode, capped
        by ``max_examples``; None when none is pending (no promotion in the episode, off, or no
        larger set than the promoted model's or the last consolidation's to train on). A promoted
        consolidation is followed by the next (whether it was promoted or not), so the post-drift
        set grows geometrically (300, 1,200, 4,000 with the shipped policy) and stops at the cap."""
        first = self.promoted_examples
        if first is not None and self.slow_change and policy.refresh_fraction > 0:
            # That run trained on the whole selection, older examples than the onset included: more
            # labels since the onset would not grow it, newer ones would (refresh_target).
            return None
        if first is None and not self.performance_onset:
            # An input (or prediction) episode whose first candidate was not promoted, its served
            # performance not degraded: the post-drift set grows the same way, and a candidate
            # fitted on more of the new inputs may yet beat the champion there.
            first = self.first_examples or None
        if first is None or policy.consolidate_factor <= 0:
            return None
        base = max(first, self.consolidated_to)
        target = math.ceil(policy.consolidate_factor * base)
        if max_examples is not None:
            target = min(target, max_examples)
        return target if target > base else None

    def refresh_target(self, policy: DriftPolicy, max_examples: int | None) -> int | None:
        """Labelled outcomes since the onset at which the next refresh run is due; None when none is:
        refreshing is off, no run of the episode showed a slow change (:attr:`slow_change`: it
        learnt better from the whole selection than from the examples since the onset, though most
        of it came before), or the chain ended. A change that keeps moving (incremental) is never
        learnt once and for all: each model goes stale as the boundary moves on, so the episode asks
        for a run on the whole recent selection (no onset) ``refresh_fraction`` x ``max_examples``
        new labels after the last attempt, for as long as refreshes are promoted (with
        ``promotion.refresh_confidence``: promoted and better beyond its bound, :func:`refresh_gained`);
        after one that was not, the next waits twice as long, and ``REFRESH_MISSES`` + 1 in a row end
        the chain (the concept settled, or moves too slowly to be worth a run). A settled sudden change's runs
        choose the examples since the onset, so it starts no chain and costs no run."""
        if policy.refresh_fraction <= 0 or max_examples is None or self.promoted_examples is None:
            return None
        if not self.slow_change:
            return None
        misses = self.attempts - self.promoted_attempt  # attempts since the last promotion
        if misses > REFRESH_MISSES:
            return None
        return self.labelled_at_attempt + math.ceil(policy.refresh_fraction * max_examples * (1 << max(0, misses)))

    def next_attempt(
        self, policy: DriftPolicy, *, degraded: bool, drop: float, guard: float, max_examples: int | None
    ) -> Attempt | None:
        """The attempt due now, if any (pure; :meth:`took` records it):

        * consolidation: a model promoted in the episode was trained on few post-drift examples, and
          the labelled outcomes since the onset reached :meth:`consolidation_target`; or, in a slow
          change, :meth:`refresh_target` (a ``refresh`` request: no onset, the whole recent selection);
        * still_degraded: served performance is still degraded and :meth:`retry_spacing` new labelled
          outcomes arrived since the last attempt, fewer than ``max_attempts`` made;

        none while the last attempt's outcome is awaited (:meth:`waiting_for_outcome`).
        """
        if self.waiting_for_outcome(policy):
            return None
        for target, reason, onset in (
            (self.consolidation_target(policy, max_examples), CONSOLIDATION, self.onset_ms),
            (self.refresh_target(policy, max_examples), REFRESH, None),
        ):
            if target is not None and self.labelled_since_onset >= target:
                labelled = self.labelled_since_onset
                return Attempt(self.attempts + 1, reason, onset, labelled, float(labelled), float(target))
        if not degraded or self.attempts >= policy.max_attempts:
            return None
        if self.labelled_since_onset - self.labelled_at_attempt < self.retry_spacing(policy):
            return None
        return Attempt(self.attempts + 1, STILL_DEGRADED, self.moved_onset(), self.labelled_since_onset, drop, guard)

    def took(self, attempt: Attempt) -> None:
        self.attempts = max(self.attempts, attempt.number)
        if attempt.onset_ms is not None and (self.onset_ms is None or attempt.onset_ms > self.onset_ms):
            # The onset moved: what came before it is no longer the episode's post-drift data.
            self.onset_ms = attempt.onset_ms
            kept = [o for o in self.outcomes if o[0] >= attempt.onset_ms]
            self.outcomes.clear()
            self.outcomes.extend(kept)
            self.labelled_since_onset = len(kept)
            # Consolidation counts post-drift examples from the onset: from the new one, afresh.
            self.consolidated_to = 0
        self.labelled_at_attempt = self.labelled_since_onset
        self.awaiting = True
        if attempt.reason == CONSOLIDATION:
            self.consolidated_to = max(self.consolidated_to, round(attempt.threshold))

    def exhausted(self, policy: DriftPolicy, max_examples: int | None = None) -> bool:
        """Every attempt was made and the last one's spacing has passed: the episode gives up (it
        closes, ``attempts_exhausted``; a later detection opens a new one). Not while a refresh
        chain lives at its spacing (:meth:`refresh_target`, the last attempt's run promoted): its
        next refresh is scheduled. After a miss the episode gives up as before: a fresh detection
        (a new onset) serves a change that moved on better than a refresh at twice the spacing."""
        chain_lives = self.attempts == self.promoted_attempt and self.refresh_target(policy, max_examples) is not None
        return (
            self.attempts >= policy.max_attempts
            and not self.waiting_for_outcome(policy)
            and self.labelled_since_onset - self.labelled_at_attempt >= self.retry_spacing(policy)
            and not chain_lives
        )

    def take_seen(self, now: float, every_s: float, *, force: bool = False) -> datetime | None:
        """The last detection time to write now (``last_seen_at``), if any is unwritten and the
        last write is ``every_s`` old (or ``force``); it then counts as written at ``now``
        (``time.monotonic()``). An open episode may see a detection at every label: written at
        each one, a label would cost a database round trip."""
        if self.seen_at is None or (not force and now - self.written_at < every_s):
            return None
        seen_at, self.seen_at, self.written_at = self.seen_at, None, now
        return seen_at
