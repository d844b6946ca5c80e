"""The models being served: one champion and at most one challenger per model, swapped by one
assignment; and how a batch is divided between a champion and its canary (:class:`Split`).

A :class:`LoadedModel` is built completely off to the side (see :mod:`driftline_deployment.loader`)
and only then does one dictionary entry point at it. A request or a consumer batch takes its
model references once and finishes on them, so nothing fails because of a swap.

A challenger is in shadow (scored, never served) or a canary (``traffic_fraction`` set): it then
serves the rows of the entities :func:`driftline.canary.in_canary` gives it, and the champion the
others. A canary that cannot score its rows never fails them: the champion serves them instead
(counted in ``driftline_deployment_canary_errors_total``, logged as ``canary_scoring_failed``),
with its own features (a feature the canary's row lacks is a missing value).

Predicted class: for a binary model, the positive class when its score (probability) is at
least 0.5, the other class otherwise; for more classes, the most probable class.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from numpy.typing import NDArray

from driftline.canary import in_canary
from driftline.logging import get_logger
from driftline.records import ModelPromoted
from driftline_deployment.metrics import CANARY_ERRORS, MODEL_VERSION
from driftline_deployment.policy import CANARY, CHALLENGER, CHAMPION
from driftline_deployment.scoring import Scores
from driftline_ml.models import to_matrix

log = get_logger(__name__)


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
    traffic_fraction: float | None = None  # a canary's share of the entities; None: champion or shadow

    @property
    def is_canary(self) -> bool:
        """A challenger that serves its share of the entities (not a shadow one)."""
        return self.slot == CHALLENGER and self.traffic_fraction is not None

    @property
    def mode(self) -> str:
        """``champion``, ``canary`` or ``shadow``."""
        if self.slot == CHAMPION:
            return CHAMPION
        return CANARY if self.is_canary else "shadow"

    @property
    def prediction_slot(self) -> str:
        """The slot its predictions name: ``champion``, ``challenger`` (shadow) or ``canary``."""
        return CANARY if self.is_canary else self.slot

    @property
    def shadow(self) -> bool:
        """Whether its predictions are shadow ones, never served."""
        return self.slot == CHALLENGER and not self.is_canary

    def serves(self, entity_id: str) -> bool:
        """Whether this model is a canary that serves ``entity_id``."""
        return self.is_canary and in_canary(self.model_name, entity_id, self.traffic_fraction)

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
            "mode": self.mode,
            "traffic_fraction": self.traffic_fraction,
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

    def remove_challenger(self, model_name: str, version: int) -> LoadedModel | None:
        """Empty the challenger slot if it holds ``version`` (a canary withdrawn); the model removed."""
        held = self._challengers.get(model_name)
        if held is None or held.version != version:
            return None
        del self._challengers[model_name]
        MODEL_VERSION.remove(model_name, CHALLENGER)
        return held

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


def canary_rows(canary: LoadedModel | None, entities: Sequence[str]) -> tuple[int, ...]:
    """The positions of the entities ``canary`` serves (none when it is not a canary)."""
    if canary is None or not canary.is_canary:
        return ()
    return tuple(i for i, entity in enumerate(entities) if canary.serves(entity))


@dataclass(frozen=True)
class Served:
    """The predictions one model made of some rows of a batch."""

    model: LoadedModel
    rows: list[int]  # positions in the batch, ascending
    scores: NDArray[np.float64]
    classes: list[str]
    seconds: float  # time in the model

    @property
    def latency_ms(self) -> float:
        """Time in the model per row."""
        return self.seconds * 1000 / len(self.rows)


@dataclass(frozen=True)
class Split:
    """The rows of one model's batch divided between its champion and its canary (see the module
    doc). Built on the caller's thread (:meth:`of`); :meth:`predict` is blocking."""

    champion: LoadedModel
    x: NDArray[np.float64]  # every row in the champion's features: it serves the canary's if the canary cannot
    canary: LoadedModel | None = None
    canary_rows: tuple[int, ...] = ()
    canary_x: NDArray[np.float64] | None = None

    @classmethod
    def of(
        cls,
        champion: LoadedModel,
        rows: Sequence[Mapping[str, Any]],
        canary: LoadedModel | None = None,
        picked: Collection[int] = (),
    ) -> Split:
        """The matrices of ``rows``: ``picked`` (see :func:`canary_rows`) for ``canary``, all of
        them for the champion. A row the champion cannot take raises ValueError (the champion is
        every row's fallback); rows the canary cannot take are the champion's."""
        x = to_matrix(rows, champion.feature_names)
        if canary is None or not picked:
            return cls(champion, x)
        ordered = tuple(sorted(picked))
        try:
            canary_x = to_matrix([rows[i] for i in ordered], canary.feature_names)
        except ValueError as exc:
            canary_failed(canary, len(ordered), exc)
            return cls(champion, x)
        return cls(champion, x, canary, ordered, canary_x)

    def predict(self) -> list[Served]:
        """The canary's predictions of its rows and the champion's of the others (of every row when
        the canary fails: counted and logged, never raised). Blocking."""
        served: list[Served] = []
        champion_rows = list(range(len(self.x)))
        if self.canary is not None and self.canary_x is not None:
            try:
                scores, classes, seconds = self.canary.timed_predict(self.canary_x)
                if not len(scores) == len(classes) == len(self.canary_rows):
                    raise ValueError(f"{len(scores)} scores, {len(classes)} classes for {len(self.canary_rows)} rows")
            except Exception as exc:
                canary_failed(self.canary, len(self.canary_rows), exc)
            else:
                served.append(Served(self.canary, list(self.canary_rows), scores, classes, seconds))
                taken = set(self.canary_rows)
                champion_rows = [i for i in champion_rows if i not in taken]
        if champion_rows:
            x = self.x if len(champion_rows) == len(self.x) else self.x[champion_rows]
            scores, classes, seconds = self.champion.timed_predict(x)
            served.insert(0, Served(self.champion, champion_rows, scores, classes, seconds))
        return served


def by_row(served: Sequence[Served]) -> list[tuple[Served, float, str]]:
    """Each row's part, score and predicted class, in the batch's order."""
    rows: dict[int, tuple[Served, float, str]] = {}
    for part in served:
        for i, score, predicted in zip(part.rows, part.scores, part.classes, strict=True):
            rows[i] = (part, float(score), predicted)
    return [rows[i] for i in sorted(rows)]


def canary_failed(canary: LoadedModel, rows: int, exc: Exception) -> None:
    """A canary could not score ``rows`` rows: the champion serves them (counted, logged)."""
    CANARY_ERRORS.labels(canary.model_name, str(canary.version)).inc()
    log.warning(
        "canary_scoring_failed",
        model=canary.model_name,
        version=canary.version,
        records=rows,
        error=f"{type(exc).__name__}: {exc}"[:500],
    )
