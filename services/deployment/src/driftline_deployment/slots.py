"""The models being served: one champion and at most one challenger per model, swapped by one
assignment.

A :class:`LoadedModel` is built completely off to the side (see :mod:`driftline_deployment.loader`)
and only then does one dictionary entry point at it. A request or a consumer batch takes its
model reference once and finishes on it, so nothing fails because of a swap.

Predicted class: for a binary model, the positive class when its score (probability) is at
least 0.5, the other class otherwise; for more classes, the most probable class.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from numpy.typing import NDArray

from driftline.records import ModelPromoted
from driftline_deployment.metrics import MODEL_VERSION
from driftline_deployment.policy import CHALLENGER, CHAMPION
from driftline_deployment.scoring import Scores


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to score, and the promotion it serves for. Never mutated: a swap replaces it."""

    model_name: str
    version: int
    slot: str
    estimator: Any  # a scikit-learn estimator, as skops loaded it
    feature_names: tuple[str, ...]
    classes: tuple[str, ...]
    positive_class: str
    loaded_at: datetime
    load_seconds: float
    promotion: ModelPromoted  # why it serves (GET /v1/deployment)
    scores: Scores  # the estimator's positive-class scores, fast for small batches

    def predict(self, x: NDArray[np.float64]) -> tuple[NDArray[np.float64], list[str]]:
        """Positive-class scores and predicted classes of the rows of ``x``."""
        scores = self.scores(x)
        if len(self.classes) == 2 and self.positive_class in self.classes:
            other = self.classes[1 - self.classes.index(self.positive_class)]
            return scores, [self.positive_class if s >= 0.5 else other for s in scores]
        return scores, [str(c) for c in self.estimator.predict(x)]

    def timed_predict(self, x: NDArray[np.float64]) -> tuple[NDArray[np.float64], list[str], float]:
        """:meth:`predict` plus the seconds spent in it (measured where it runs, e.g. a worker thread)."""
        start = time.perf_counter()
        scores, classes = self.predict(x)
        return scores, classes, time.perf_counter() - start

    def describe(self) -> dict[str, Any]:
        p = self.promotion
        return {
            "model_name": p.model_name,
            "version": p.version,
            "slot": self.slot,
            "run_id": p.run_id,
            "artifact_sha256": p.artifact_sha256,
            "feature_names": list(self.feature_names),
            "classes": list(self.classes),
            "positive_class": self.positive_class,
            "loaded_since": self.loaded_at.isoformat(),
            "load_seconds": round(self.load_seconds, 4),
            "fast_scoring_below_rows": self.scores.fast_below if self.scores.fast else 0,
            "why": {
                "action": p.action,
                "reason": p.reason,
                "actor": p.actor,
                "promotion_event_id": p.event_id,
                "correlation_id": p.correlation_id,
            },
            "metrics": dict(p.metrics),
        }


class ModelSlots:
    """The models being served. Readers take a reference once; a swap is one assignment."""

    def __init__(self) -> None:
        self._champions: dict[str, LoadedModel] = {}
        self._challengers: dict[str, LoadedModel] = {}

    def champion(self, model_name: str) -> LoadedModel | None:
        return self._champions.get(model_name)

    def challenger(self, model_name: str) -> LoadedModel | None:
        return self._challengers.get(model_name)

    def install(self, model: LoadedModel) -> LoadedModel | None:
        """Put ``model`` in its slot. A new champion empties the challenger slot (the challenger
        was promoted, or it was shadowing a champion that is gone); the challenger removed, if any."""
        retired = None
        if model.slot == CHAMPION:
            self._champions[model.model_name] = model
            retired = self._challengers.pop(model.model_name, None)
            if retired is not None:
                MODEL_VERSION.remove(model.model_name, CHALLENGER)
        else:
            self._challengers[model.model_name] = model
        MODEL_VERSION.labels(model.model_name, model.slot).set(model.version)
        return retired

    def remove(self, model_name: str) -> list[LoadedModel]:
        """Stop serving ``model_name`` (both slots); the models removed, champion first."""
        removed = []
        for slot, held in ((CHAMPION, self._champions), (CHALLENGER, self._challengers)):
            model = held.pop(model_name, None)
            if model is not None:
                MODEL_VERSION.remove(model_name, slot)
                removed.append(model)
        return removed

    def models(self) -> list[str]:
        return sorted(set(self._champions) | set(self._challengers))
