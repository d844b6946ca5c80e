"""HTTP API of monitoring: GET /v1/drift, GET /v1/reports, GET /v1/models/{name}/comparison (the
shadow and canary verdicts), and a page with plots at GET /."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import HTMLResponse

from driftline.events import as_utc
from driftline.project import DriftPolicy, PromotionPolicy
from driftline.projects import ProjectBook
from driftline.service import wired
from driftline_monitoring import page
from driftline_monitoring.drift import Detection, ModelMonitor
from driftline_monitoring.episodes import evidence_by_feature, score_summary
from driftline_monitoring.handlers import Monitoring
from driftline_monitoring.store import MonitoringStore


@dataclass(frozen=True)
class MonitoringDeps:
    """What the routes reach through ``Depends(wired)`` (built by ``service.wire``)."""

    monitoring: Monitoring
    store: MonitoringStore
    policy: DriftPolicy
    page_checks: int
    projects: ProjectBook = field(default_factory=ProjectBook)

    def model_filter(self, project: str | None, model: str | None) -> set[str] | None:
        """The model names a ``project``/``model`` filter keeps (None: every model)."""
        if project is None and model is None:
            return None
        names = {model} if model is not None else None
        if project is not None:
            applied = self.projects.get(project)
            of_project = {applied.project.model.name} if applied is not None else set()
            names = of_project if names is None else names & of_project
        return names


Deps = Annotated[MonitoringDeps, Depends(wired)]

router = APIRouter()


def detection_view(d: Detection | None) -> dict[str, Any] | None:
    if d is None:
        return None
    return {
        "kind": d.kind,
        "method": d.method,
        "statistic": d.statistic,
        "threshold": d.threshold,
        "features": d.features,
    }


def monitor_view(m: ModelMonitor, pending_versions: list[int]) -> dict[str, Any]:
    """Current statistics of one monitored model."""
    last = m.last_check
    return {
        "model_name": m.reference.model_name,
        "model_version": m.reference.version,
        "promotion_event_id": m.reference.promotion_event_id,
        # Promoted after it, not (yet) seen serving: refused, or still being deployed.
        "pending_versions": pending_versions,
        "reference_accuracy": m.reference.accuracy,
        "records_seen": m.records_seen,
        "windows": {"vectors": len(m.vectors), "scores": len(m.scores), "labelled": len(m.performance.outcomes)},
        "performance": m.performance.summary(),
        "episode": None if m.episode is None else episode_view(m),
        "last_check": None
        if last is None
        else {
            "records_seen": last.records_seen,
            "window_start": as_utc(last.window[0]).isoformat(),
            "window_end": as_utc(last.window[1]).isoformat(),
            "window_size": last.window[2],
            "features": evidence_by_feature(last.inputs),
            "score": score_summary(last.scores, last.score_window),
            "drift": detection_view(last.detection),
        },
    }


def episode_view(m: ModelMonitor) -> dict[str, Any]:
    """The open episode's lifecycle: attempts made, what the next one waits for."""
    e = m.episode
    assert e is not None
    target = e.consolidation_target(m.policy, m.max_examples)
    return {
        "episode_id": e.episode_id,
        "kind": e.kind,
        "onset": as_utc(e.onset_ms).isoformat() if e.onset_ms is not None else None,
        "attempts": e.attempts,
        "max_attempts": m.policy.max_attempts,
        "labelled_since_onset": e.labelled_since_onset,
        "next_retry_after_labels": e.labelled_at_attempt + e.retry_spacing(m.policy),
        "still_degraded": m.performance.degraded(),
        "consolidation_at_labels": target,
        "clean_checks": e.clean_checks,
    }


def models_view(monitoring: Monitoring) -> list[dict[str, Any]]:
    """Every monitored model, by name."""
    return [
        monitor_view(m, [p.version for p in monitoring.serving.pending(name)])
        for name, m in sorted(monitoring.monitors.items())
    ]


@router.get("/v1/drift", tags=["monitoring"], summary="Current drift statistics per model and feature")
async def drift(
    deps: Deps,
    project: str | None = Query(None, description="Only the model of this project."),
    model: str | None = Query(None, description="Only this model."),
) -> dict[str, Any]:
    keep = deps.model_filter(project, model)
    models = [m for m in models_view(deps.monitoring) if keep is None or m["model_name"] in keep]
    # Models this instance does not monitor (yet) still show their last stored check.
    known = {m["model_name"] for m in models}
    stored = [
        s
        for s in await deps.store.latest_summaries()
        if s["model_name"] not in known and (keep is None or s["model_name"] in keep)
    ]
    for m in models:
        m["policy"] = deps.monitoring.monitors[m["model_name"]].policy.model_dump()
    return {"policy": deps.policy.model_dump(), "models": models, "last_stored_checks": stored}


@router.get(
    "/v1/reports",
    tags=["monitoring"],
    summary="Drift reports (one per episode, with its further attempts), newest first",
)
async def reports(
    deps: Deps,
    project: str | None = Query(None, description="Only the model of this project."),
    model: str | None = Query(None, description="Only this model."),
    open_only: bool = Query(False, alias="open", description="Only episodes still open."),
    limit: int = Query(50, ge=1, le=1000),
) -> dict[str, Any]:
    keep = deps.model_filter(project, model)
    if keep is not None and len(keep) != 1:
        return {"reports": []}  # a project with no such model
    name = next(iter(keep)) if keep else None
    return {"reports": await deps.store.reports(model_name=name, open_only=open_only, limit=limit)}


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def index(deps: Deps) -> HTMLResponse:
    store = deps.store
    names = await store.models()
    models = [(n, await store.summaries(n, limit=deps.page_checks)) for n in names]
    html = page.render(
        models,
        await store.reports(limit=20),
        psi_threshold=deps.policy.psi_threshold,
        accuracy_drop=deps.policy.accuracy_drop,
    )
    return HTMLResponse(html)


@router.get(
    "/v1/models/{name}/comparison",
    summary="The challengers against the champion: in shadow on the same labelled events, as canaries on their arms",
)
async def comparison(
    name: str,
    deps: Deps,
    confidence: float = Query(0.95, gt=0, lt=1, description="Shadow: two-sided confidence of the interval."),
    min_pairs: int = Query(100, ge=1, description="Shadow: paired labelled outcomes needed for a verdict."),
    canary_confidence: float | None = Query(
        None, gt=0, lt=1, description="Canaries: two-sided confidence (default: the project's promotion policy)."
    ),
    min_labels: int | None = Query(
        None, ge=1, description="Canaries: labelled events each arm needs for a verdict (default: the policy's)."
    ),
    max_labels: int | None = Query(
        None,
        ge=1,
        description="Canaries: the canary arm's labelled events that make no difference decisive "
        "(default: the policy's).",
    ),
) -> dict[str, Any]:
    """``comparisons``, per (champion version, challenger version) in shadow, newest challenger
    first: the paired counts, both accuracies, the difference challenger - champion with its
    confidence interval, McNemar's one-sided p-value and the verdict. ``canaries``, per (champion
    version, canary version), the canary started last first: each arm's labelled and right counts
    and accuracy, the difference with its interval for independent proportions, the two-proportion
    z-test's one-sided p-value, the verdict, whether it is decisive, and whether the canary is still
    active (:mod:`driftline_monitoring.comparison`)."""
    monitoring = deps.monitoring
    policy = monitoring.promotion_of(name) or PromotionPolicy()
    judged = (
        policy.canary_confidence if canary_confidence is None else canary_confidence,
        policy.canary_min_labels if min_labels is None else min_labels,
        policy.canary_max_labels if max_labels is None else max_labels,
    )
    return {
        "model_name": name,
        "comparisons": [
            {"champion_version": cv, "challenger_version": sv, **counts.summary(confidence, min_pairs)}
            for cv, sv, counts in monitoring.shadow.comparisons(name)
        ],
        "canaries": [
            {
                "champion_version": cv,
                "challenger_version": kv,
                "traffic_fraction": fraction,
                "active": monitoring.canary.is_active((name, cv, kv)),
                **counts.summary(*judged),
            }
            for cv, kv, fraction, counts in monitoring.canary.comparisons(name)
        ],
    }
