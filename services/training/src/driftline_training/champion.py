"""The champion each run compares itself with, and that comparison on the run's holdout.

The champion is scored only on the holdout examples after the end of its own training data
(from its metadata), so it is never scored on examples it was fitted on; with fewer than
``min_comparison_examples`` of them there is no fair comparison and the run says so. Its artifact
is verified (SHA-256) and loaded under the trusted-types list; a tampered or unsafe file is
refused and the run says why, so the registry cannot promote on a comparison that did not happen.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from driftline.artifacts import ArtifactIntegrityError, ArtifactNotFound
from driftline.events import as_utc
from driftline.logging import get_logger
from driftline.records import ModelPromoted
from driftline.retry import is_transient
from driftline_ml.models import UnsafeArtifactError, load_model
from driftline_training import pipeline
from driftline_training.artifacts import RunArtifacts
from driftline_training.pipeline import FitResult, TrainingFailure

log = get_logger(__name__)

CHAMPION_ACTIONS = ("promote", "rollback")
"""The models.promoted actions that change the champion (a shadow deployment does not)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Champion:
    model_name: str
    version: int
    run_id: str
    artifact_bucket: str
    artifact_key: str
    artifact_sha256: str
    feature_names: tuple[str, ...]
    # The champion's metadata document: it records the end of the champion's training data, so a
    # run compares on holdout examples the champion never saw. None: announced before promotions
    # carried it to training.
    metadata_key: str | None = None
    metadata_sha256: str | None = None

    @classmethod
    def from_promoted(cls, e: ModelPromoted) -> Champion:
        """The champion a promotion names: its fields of the same name."""
        return cls(**{f.name: getattr(e, f.name) for f in fields(cls)})


@dataclass
class ChampionComparison:
    """The champion against the candidate on the holdout examples the champion did not train on."""

    version: int | None = None
    train_end: datetime | None = None  # end of the champion's training data (None: unknown)
    n_examples: int = 0
    champion_metrics: dict[str, float] | None = None
    candidate_metrics: dict[str, float] | None = None
    wins: int | None = None  # comparison examples only the candidate predicts right
    losses: int | None = None  # ... only the champion
    error: str | None = None

    @property
    def compared_version(self) -> int | None:
        """The champion's version when it was actually scored."""
        return self.version if self.champion_metrics is not None else None

    @property
    def n_compared(self) -> int | None:
        return self.n_examples if self.champion_metrics is not None else None

    def describe(self, n_holdout: int) -> dict[str, Any] | None:
        if self.version is None:
            return None
        return {
            "champion_version": self.version,
            "champion_train_end": self.train_end.isoformat() if self.train_end else None,
            "n_examples": self.n_examples,
            "n_holdout_excluded": n_holdout - self.n_examples,
            "candidate_metrics": self.candidate_metrics,
            "champion_metrics": self.champion_metrics,
            "wins": self.wins,
            "losses": self.losses,
            "error": self.error,
        }


class _NoComparison(Exception):
    """The champion cannot be compared fairly on this holdout."""


@dataclass
class ChampionEvaluator:
    artifacts: RunArtifacts
    positive_class: str
    min_comparison_examples: int = 50
    recent_fraction: float = 1.0  # drift runs: the most recent part of the comparison set (policy)

    async def compare(
        self, champion: Champion | None, result: FitResult, *, drift_run: bool = False
    ) -> ChampionComparison:
        """The champion and the candidate on the same examples, or why the champion could not be
        evaluated. A drift run compares on the most recent ``recent_fraction`` of them."""
        if champion is None:
            return ChampionComparison()
        comparison = ChampionComparison(version=champion.version, n_examples=len(result.holdout))
        try:
            comparison.train_end = await self._train_end(champion)
            examples = pipeline.comparison_set(
                result.holdout,
                comparison.train_end,
                recent=self.recent_fraction if drift_run else 1.0,
                minimum=self.min_comparison_examples,
            )
            comparison.n_examples = len(examples)
            self._check_enough(champion, comparison, len(result.holdout))
            model = await self._champion_model(champion)
            comparison.champion_metrics = await asyncio.to_thread(
                pipeline.evaluate_on_holdout, model, examples, champion.feature_names, self.positive_class
            )
            comparison.candidate_metrics = await self._score_candidate(result, examples)
            comparison.wins, comparison.losses = await asyncio.to_thread(
                pipeline.paired_counts, result.judged, result.feature_names, model, champion.feature_names, examples
            )
            return comparison
        except TrainingFailure as failure:
            if failure.error_type == "object_store_unavailable":
                raise
            error = failure.reason
        except (ArtifactIntegrityError, ArtifactNotFound, UnsafeArtifactError, _NoComparison) as exc:
            error = str(exc)
        except Exception as exc:
            if is_transient(exc):
                raise
            error = f"champion v{champion.version} could not be evaluated: {exc!r}"[:1000]
        log.warning("champion_not_evaluated", champion_version=champion.version, error=error)
        comparison.champion_metrics = comparison.candidate_metrics = None
        comparison.wins = comparison.losses = None
        comparison.error = error
        return comparison

    async def _train_end(self, champion: Champion) -> datetime | None:
        """The end of the champion's training data, from its (verified) metadata; None if unrecorded."""
        if not champion.metadata_key or not champion.metadata_sha256:
            return None  # the whole holdout
        metadata = await self.artifacts.get_json(
            champion.metadata_key, champion.metadata_sha256, f"the metadata of champion v{champion.version}"
        )
        end = (metadata.get("selection") or {}).get("train_end") if isinstance(metadata, dict) else None
        return as_utc(datetime.fromisoformat(end)) if isinstance(end, str) else None

    def _check_enough(self, champion: Champion, comparison: ChampionComparison, n_holdout: int) -> None:
        if comparison.n_examples >= self.min_comparison_examples:
            return
        end = comparison.train_end.isoformat() if comparison.train_end else "?"
        raise _NoComparison(
            f"only {comparison.n_examples} of the {n_holdout} holdout examples come after the end of "
            f"champion v{champion.version}'s training data ({end}); a fair comparison needs at least "
            f"{self.min_comparison_examples}"
        )

    async def _champion_model(self, champion: Champion) -> Any:
        data = await self.artifacts.get(
            champion.artifact_key, champion.artifact_sha256, f"the download of champion v{champion.version}"
        )
        return await asyncio.to_thread(load_model, data)

    async def _score_candidate(self, result: FitResult, examples: list[pipeline.Example]) -> dict[str, float]:
        if len(examples) == len(result.holdout):
            return dict(result.metrics)
        return await asyncio.to_thread(
            pipeline.evaluate_on_holdout, result.judged, examples, result.feature_names, self.positive_class
        )
