"""The project file: one YAML document per deployment that every service reads.

It names the event type and its Avro payload schema, the entity key, the label, the features
(raw fields, derived expressions, per-entity windowed aggregates), the estimator, and the
training, drift and promotion policies. A feature is defined here once; features computes it,
training fits on it, deployment scores it and monitoring watches it.

The shipped example is ``examples/loan_approval/project.yaml`` in the checkout (its payload schema
is ``schemas/events/LoanApplication.avsc``); point ``DRIFTLINE_PROJECT_FILE`` at another file to
run a different project. An installed image has no checkout, so it must name its project file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from driftline.settings import repo_root

_ROOT = repo_root()
# The default project file; None outside a checkout.
EXAMPLE_PROJECT = _ROOT / "examples" / "loan_approval" / "project.yaml" if _ROOT is not None else None

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def parse_duration(value: str | int | float) -> float:
    """'15m' → 900.0 seconds; numbers are seconds."""
    if isinstance(value, int | float):
        return float(value)
    m = _DURATION.match(value)
    if not m:
        raise ValueError(f"bad duration {value!r}: use e.g. 500ms, 30s, 15m, 2h, 7d")
    return float(m.group(1)) * _UNIT_S[m.group(2)]


_COUNT = re.compile(r"^\s*(\d+)\s*(events?|labels?)\s*$")
CooldownUnit = Literal["s", "events", "labels"]


@dataclass(frozen=True, slots=True)
class CooldownSpec:
    """A training cooldown: ``amount`` seconds between the two drift events' event times (unit
    ``s``), or ``amount`` of training's stored examples whose event time lies between them: feature
    vectors (``events``) or the labelled ones among them (``labels``)."""

    amount: float
    unit: CooldownUnit

    @property
    def is_duration(self) -> bool:
        return self.unit == "s"

    def __str__(self) -> str:
        return f"{self.amount:g}s" if self.is_duration else f"{self.amount:.0f} {self.unit}"


def parse_cooldown(value: str) -> CooldownSpec:
    """'5m' → 300 s; '2000 events' / '500 labels' → a count of the data ('1 label' is fine too)."""
    m = _COUNT.match(value)
    if m:
        unit = m.group(2)
        return CooldownSpec(float(m.group(1)), "events" if unit.startswith("event") else "labels")
    try:
        return CooldownSpec(parse_duration(value), "s")
    except ValueError:
        raise ValueError(
            f"bad cooldown {value!r}: use a duration (e.g. 60s, 5m) or a count of the data "
            "(e.g. 2000 events, 500 labels)"
        ) from None


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EventSpec(_Model):
    type: str = Field(description="Event type name clients send, e.g. 'loan_application'.")
    schema_name: str = Field(alias="schema", description="Avro record in schemas/events/ for the payload.")
    entity_key: str = Field(description="Payload field that identifies the entity.")


class LabelSpec(_Model):
    name: str = "label"
    classes: list[str] = Field(min_length=2, description="Class names; the label's values.")
    positive_class: str

    @model_validator(mode="after")
    def _positive_is_a_class(self) -> LabelSpec:
        if self.positive_class not in self.classes:
            raise ValueError(f"positive_class {self.positive_class!r} is not one of {self.classes}")
        return self


class DerivedFeature(_Model):
    name: str
    expr: str | None = Field(None, description="Arithmetic over other features, e.g. 'loan / (salary + 1)'.")
    function: str | None = Field(None, description="'module:function' registered Python function of the row.")

    @model_validator(mode="after")
    def _one_of(self) -> DerivedFeature:
        if (self.expr is None) == (self.function is None):
            raise ValueError(f"derived feature {self.name!r}: give exactly one of expr or function")
        return self


class WindowSpec(_Model):
    type: Literal["tumbling", "hopping"] = "tumbling"
    size: str = Field(description="Window length, e.g. '1h'.")
    step: str | None = Field(None, description="Hop for hopping windows (defaults to size).")
    lateness: str = Field("0s", description="How late (event time) an event may arrive and still count.")

    @property
    def size_s(self) -> float:
        return parse_duration(self.size)

    @property
    def step_s(self) -> float:
        return parse_duration(self.step) if self.step else self.size_s

    @property
    def lateness_s(self) -> float:
        return parse_duration(self.lateness)

    @model_validator(mode="after")
    def _valid(self) -> WindowSpec:
        if self.size_s <= 0 or self.step_s <= 0 or self.lateness_s < 0:
            raise ValueError("window size and step must be > 0, lateness >= 0")
        if self.type == "tumbling" and self.step is not None and self.step_s != self.size_s:
            raise ValueError("a tumbling window's step equals its size; use type: hopping")
        return self


class WindowedFeature(_Model):
    name: str
    field: str = Field(description="Raw or derived feature aggregated per entity.")
    agg: Literal["count", "sum", "mean", "min", "max", "stddev"]
    window: WindowSpec


class FeatureSpec(_Model):
    version: str = Field(description="Feature-set version; bump it when a definition changes.")
    raw: list[str]
    categorical: list[str] = Field(default_factory=list, description="Features binned by category for drift.")
    derived: list[DerivedFeature] = Field(default_factory=list)
    windows: list[WindowedFeature] = Field(default_factory=list)

    @property
    def names(self) -> list[str]:
        """Every feature a vector carries, in a stable order."""
        return [*self.raw, *(d.name for d in self.derived), *(w.name for w in self.windows)]

    @model_validator(mode="after")
    def _unique_names(self) -> FeatureSpec:
        names = self.names
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"feature names defined twice: {sorted(dupes)}")
        bad = [n for n in names if not _NAME.match(n)]
        if bad:
            raise ValueError(f"feature names must be identifiers: {bad}")
        return self


class ModelSpec(_Model):
    name: str
    estimator: str = Field(description="Dotted path of a scikit-learn estimator class.")
    params: dict[str, Any] = Field(default_factory=dict)
    features: list[str] | None = Field(None, description="Model inputs (default: every feature).")

    @field_validator("estimator")
    @classmethod
    def _sklearn_only(cls, v: str) -> str:
        if not v.startswith("sklearn."):
            raise ValueError("estimator must be a scikit-learn class (sklearn.…): only those load safely with skops")
        return v


class TrainingPolicy(_Model):
    min_examples: int = 200
    max_examples: int = 5000
    holdout_fraction: float = Field(0.25, gt=0, lt=1)
    selection: Literal["recent", "since_drift"] = "since_drift"
    seed: int = 7
    cooldown: str = Field(
        "60s",
        description="No second drift-triggered run within this of another requested one: a duration of "
        "event time ('60s', '5m') or a count of the data between the two drift events: feature vectors "
        "('2000 events') or labelled examples ('500 labels'), the same at any event rate.",
    )
    refit: bool = Field(
        True,
        description="After the holdout evaluation and the champion comparison (made with the model fitted "
        "on the training split), the model that is stored and served is fitted again on every selected "
        "example, holdout included: the newest examples are the most valuable after a drift.",
    )
    initial_training_after: int = Field(
        0, description="Train the first model automatically once this many labelled examples exist (0: never)."
    )

    @field_validator("cooldown")
    @classmethod
    def _valid_cooldown(cls, v: str) -> str:
        parse_cooldown(v)
        return v

    @property
    def cooldown_spec(self) -> CooldownSpec:
        return parse_cooldown(self.cooldown)

    @property
    def cooldown_s(self) -> float:
        """The cooldown in seconds; only for a duration (a count has none: see :attr:`cooldown_spec`)."""
        spec = self.cooldown_spec
        if not spec.is_duration:
            raise ValueError(f"training.cooldown {self.cooldown!r} is a count of {spec.unit}, not a duration")
        return spec.amount


Detector = Literal["page_hinkley", "adwin"]
DETECTORS: tuple[Detector, ...] = ("page_hinkley", "adwin")


class DriftPolicy(_Model):
    window: int = Field(500, description="Sliding window of recent records compared to the reference.")
    min_window: int = Field(300, description="No input/prediction test before the window holds this many.")
    check_every: int = Field(100, description="Run the tests every N records.")
    psi_threshold: float = 0.25
    ks_p_value: float = Field(1e-4, description="KS test p-value below which a numeric feature drifted.")
    min_drifted_features: int = 1
    performance_window: int = Field(300, description="Labelled predictions in the rolling accuracy window.")
    min_labels: int = 150
    accuracy_drop: float = Field(0.1, description="Alarm when rolling accuracy falls this far below the holdout's.")
    page_hinkley_threshold: float = 50.0
    page_hinkley_delta: float = 0.005
    detectors: list[Detector] = Field(
        default_factory=lambda: list(DETECTORS),
        description="Online detectors on the 0/1 error stream of joined predictions (either may raise).",
    )
    adwin_delta: float = Field(0.002, description="ADWIN's confidence (river's default).")
    # The episode lifecycle, in labelled outcomes (the units of the data, not of the clock).
    retry_after_labels: int = Field(
        300,
        description="While an episode is open and served performance is still degraded, ask for "
        "training again once this many new labelled outcomes arrived since the last attempt.",
    )
    retry_growth: float = Field(1.5, description="Each further attempt waits this many times longer (in labels).")
    max_attempts: int = Field(5, description="Training requests per episode, the first included (consolidation aside).")
    consolidate_factor: float = Field(
        4.0,
        description="After a promotion in an episode, one more run once the labelled outcomes since the "
        "onset reach this many times the promoted run's examples (capped by training.max_examples); 0: off.",
    )
    refresh_fraction: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Refreshes in a slow change: once a promoted run of the episode learnt better from the "
        "whole selection than from the examples since the onset (most of it older than the onset), one more "
        "run on the whole recent selection each time this fraction of training.max_examples new labelled "
        "outcomes arrived, for as long as they are promoted (after one that is not, twice the spacing; a "
        "second one in a row ends it); 0: off (the default: measured in docs/drift-policies.md).",
    )


class PromotionPolicy(_Model):
    metric: str = "accuracy"
    margin: float = Field(0.0, description="Candidate must beat the champion by at least this much.")
    floor: float = Field(0.6, description="Candidate must reach at least this value.")
    confidence: float = Field(
        0.9,
        ge=0,
        lt=1,
        description="For a proportion metric (accuracy…), the improvement over the champion must also "
        "exceed the noise of the comparison: z(confidence) standard errors of the difference on the "
        "compared examples (0: off).",
    )
    refresh_confidence: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="A refresh (a drift run of a slow-change episode's refresh chain on the whole recent "
        "selection: a window of the champion's size on newer data) is promoted unless the champion is "
        "better on the same comparison beyond z(this) standard errors of the paired difference (McNemar), "
        "instead of having to be better beyond promotion.confidence; its refresh chain goes on only after a "
        "refresh better beyond the same bound (drift.refresh_fraction). At 0.5 (z = 0): promoted unless "
        "worse, the chain goes on while better. 0: off, a refresh is judged like any candidate.",
    )
    compare_recent: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Drift runs compare candidate and champion on this most recent fraction of the "
        "holdout examples the champion did not train on (at least the minimum comparison size).",
    )
    shadow_min_pairs: int = Field(
        200,
        ge=1,
        description="Shadow verdicts: labelled events both the champion and the challenger predicted, "
        "at least, before monitoring judges (and the registry may promote the challenger).",
    )
    shadow_confidence: float = Field(
        0.95,
        gt=0,
        lt=1,
        description="Shadow verdicts: the challenger is promoted when the two-sided interval of its accuracy "
        "minus the champion's, at this confidence, lies above 0.",
    )
    canary_min_labels: int = Field(
        200,
        ge=1,
        description="Canary verdicts: labelled events each arm (the canary's entities and the champion's) "
        "served, at least, before monitoring judges.",
    )
    canary_max_labels: int = Field(
        2000,
        ge=1,
        description="Canary verdicts: labelled events of the canary's arm after which a canary not shown "
        "better is withdrawn (verdict no_difference); the champion keeps serving.",
    )
    canary_confidence: float = Field(
        0.95,
        gt=0,
        lt=1,
        description="Canary verdicts: the canary is promoted when the two-sided interval of its accuracy "
        "minus the champion's (two independent samples) lies above 0, withdrawn when it lies below 0.",
    )

    @field_validator("refresh_confidence")
    @classmethod
    def _refresh_confidence(cls, v: float) -> float:
        if 0 < v < 0.5:
            raise ValueError(
                "refresh_confidence is 0 (off) or at least 0.5 (z >= 0): below, a better refresh could be rejected"
            )
        return v


class Project(_Model):
    name: str
    event: EventSpec
    label: LabelSpec
    features: FeatureSpec
    model: ModelSpec
    training: TrainingPolicy = Field(default_factory=lambda: TrainingPolicy())
    drift: DriftPolicy = Field(default_factory=lambda: DriftPolicy())
    promotion: PromotionPolicy = Field(default_factory=lambda: PromotionPolicy())
    path: Path | None = Field(None, exclude=True)

    @property
    def model_features(self) -> list[str]:
        return list(self.model.features or self.features.names)

    @model_validator(mode="after")
    def _model_features_exist(self) -> Project:
        unknown = set(self.model.features or []) - set(self.features.names)
        if unknown:
            raise ValueError(f"model.features names unknown features: {sorted(unknown)}")
        return self


def load_project(path: Path | str | None = None) -> Project:
    """Load and validate a project file (default: the shipped loan-approval example of the checkout)."""
    p = Path(path) if path else EXAMPLE_PROJECT
    if p is None:
        raise FileNotFoundError("no project file: set DRIFTLINE_PROJECT_FILE (the shipped example is in the checkout)")
    with p.open() as f:
        doc = yaml.safe_load(f)
    return Project.model_validate({**doc, "path": p})


@cache
def _cached(path: str) -> Project:
    return load_project(path or None)


def project_from_settings(stack: Any) -> Project:
    """The project named by ``DRIFTLINE_PROJECT_FILE`` (parsed once per process)."""
    return _cached(str(stack.project_file or ""))
