"""Which examples a drift run trains on: the data decides between 'since the onset' and 'all recent'.

A drift run of ``selection: since_drift`` used to train on the examples after the episode's onset
estimate only. That is right after a sudden change (older labels follow the old concept), but it
throws away good data when the change is slow (incremental drift: the onset of a rotation that never
settles is arbitrary, and the newest few hundred examples make a weaker model than the newest few
thousand) or when only P(x) moved (a covariate shift leaves every older label valid).

So a drift run fits both candidates and keeps the one that is more accurate on a holdout both have
not seen: the newest ``holdout_fraction`` of the examples after the onset, the same slice either
way. Ties keep 'since the onset'. The chosen window is then fitted as every run is
(:func:`driftline_training.pipeline.fit`, with that same holdout, and the refit when the policy asks),
so the champion comparison and the registry's decision are unchanged. The cost is one more fit
per drift run while the window is longer than the data after the onset.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from driftline.project import Project, TrainingPolicy
from driftline_ml.models import build_estimator
from driftline_training.pipeline import Example, FitResult, TrainingFailure, check_examples, feature_matrix, fit

SINCE_ONSET, RECENT = "since_onset", "recent"


@dataclass(frozen=True, slots=True)
class WindowChoice:
    """What a drift run compared before it chose its training window."""

    chosen: str  # since_onset | recent
    since_onset: int  # examples after the onset (training split + holdout)
    recent: int  # all selected examples
    holdout: int  # the common holdout's size
    accuracy: dict[str, float]  # each candidate's accuracy on the common holdout
    seconds: float

    def as_dict(self) -> dict[str, object]:
        return {
            "chosen": self.chosen,
            "since_onset": self.since_onset,
            "recent": self.recent,
            "holdout": self.holdout,
            "accuracy": dict(self.accuracy),
        }


def fit_choosing_window(
    project: Project, examples: Sequence[Example], since: datetime | None, policy: TrainingPolicy
) -> tuple[FitResult, WindowChoice | None]:
    """Fit on the better of the two windows (see the module docstring); ``examples`` are the most
    recent selected ones, older ones than ``since`` included. Without ``since``, or when every
    example is after it, this is :func:`pipeline.fit` (and no choice is reported)."""
    ordered = sorted(examples, key=lambda e: (e.event_time, e.example_id))
    if since is None:
        return fit(project, ordered, policy), None
    after = [e for e in ordered if e.event_time >= since]
    check_examples(after, policy)
    if len(after) == len(ordered):
        return fit(project, ordered, policy), None
    started = time.perf_counter()
    n_holdout = min(max(1, math.ceil(len(after) * policy.holdout_fraction)), len(after) - 1)
    holdout = after[-n_holdout:]
    candidates = {SINCE_ONSET: after[:-n_holdout], RECENT: ordered[:-n_holdout]}
    onset_classes = sorted({e.label for e in candidates[SINCE_ONSET]})
    if len(onset_classes) < 2:
        # One class since the onset: no window can be judged on it (any model that predicts that
        # class wins), and the older examples are what since_drift exists to leave out.
        raise TrainingFailure(
            "single_class",
            f"the examples since the drift onset have one class only ({onset_classes}): "
            "a classifier needs at least two",
            retryable=True,
        )
    names = project.model_features
    x_holdout = feature_matrix(holdout, names)
    y_holdout = np.asarray([e.label for e in holdout])
    accuracy: dict[str, float] = {}
    for window, train in candidates.items():
        labels = [e.label for e in train]
        model = build_estimator(project.model, seed=policy.seed)
        try:
            model.fit(feature_matrix(train, names), np.asarray(labels))
        except (ValueError, TypeError) as exc:
            raise TrainingFailure("fit_error", f"{project.model.estimator}.fit failed: {exc}") from None
        accuracy[window] = float(np.mean(model.predict(x_holdout) == y_holdout))
    chosen = RECENT if accuracy.get(RECENT, -1.0) > accuracy.get(SINCE_ONSET, -1.0) else SINCE_ONSET
    window_examples = ordered if chosen == RECENT else after
    result = fit(project, window_examples, policy, n_holdout=n_holdout if chosen == SINCE_ONSET else None)
    choice = WindowChoice(
        chosen=chosen,
        since_onset=len(after),
        recent=len(ordered),
        holdout=n_holdout,
        accuracy=accuracy,
        seconds=time.perf_counter() - started,
    )
    result.timings["window_s"] = choice.seconds
    return result, choice
