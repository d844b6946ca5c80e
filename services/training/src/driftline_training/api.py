"""HTTP API of the training service: ask for a run, follow runs, see what training knows."""

# No `from __future__ import annotations` here: FastAPI evaluates the route annotations.

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from pydantic import BaseModel, ConfigDict, Field

from driftline.auth import TokenAuth
from driftline.catalog import TRAINING_REQUESTED
from driftline.producer import EventProducer
from driftline.project import Project
from driftline.retry import is_transient
from driftline.service import wired
from driftline_training.handlers import ProjectsTraining
from driftline_training.pipeline import OVERRIDABLE, TrainingFailure, effective_policy
from driftline_training.requests import request_record, run_id_of
from driftline_training.runs import Runs
from driftline_training.store import TrainingStore


@dataclass
class TrainingDeps:
    """The service's objects, as ``wire`` builds them: what the routes (and the benchmark) reach."""

    project: Project  # the configured project: its model is the default of a request
    store: TrainingStore
    producer: EventProducer
    auth: TokenAuth
    training: ProjectsTraining

    @property
    def runs(self) -> Runs:
        """The configured project's runs (the benchmark's)."""
        h = self.training.of_model(self.project.model.name)
        if h is None:
            raise LookupError(f"project {self.project.name!r} is not on the projects topic")
        return h.runs


Deps = Annotated[TrainingDeps, Depends(wired)]


async def _actor(request: Request, deps: Deps) -> str:
    """The bearer token's actor (401 without a token, 403 with a wrong one)."""
    return await deps.auth(request)


Actor = Annotated[str, Depends(_actor)]


class TrainingRequestBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_name: str | None = Field(None, description="Model to train (default: the configured project's model).")
    reason: str = Field("manual", min_length=1, max_length=200, description="Why; 'drift' is reserved.")
    request_id: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="Idempotency key: the same request id never starts a second run.",
    )
    since: datetime | None = Field(None, description="With selection since_drift: only examples at or after this.")
    parameters: dict[str, str | int | float] = Field(
        default_factory=dict, description=f"Training-policy overrides: {', '.join(OVERRIDABLE)}."
    )


router = APIRouter(prefix="/v1", tags=["training"])


@router.post(
    "/training-requests",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Ask for a training run (published on training.requested; the run follows)",
    responses={503: {"description": "Kafka did not take the request in time: retry with the same request_id"}},
)
async def request_training(body: TrainingRequestBody, deps: Deps, actor: Actor) -> Any:
    model_name = body.model_name or deps.project.model.name
    handlers = deps.training.of_model(model_name)
    if handlers is None:
        known = ", ".join(sorted(deps.training.by_model)) or "none"
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            detail={"error": "unknown_model", "reason": f"no project trains {model_name!r} (models: {known})"},
        )
    if body.reason == "drift":
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            detail={"error": "invalid_reason", "reason": "'drift' is reserved for drift-triggered runs"},
        )
    parameters = {k: str(v) for k, v in body.parameters.items()}
    try:
        effective_policy(handlers.project.training, parameters)
    except TrainingFailure as failure:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, detail={"error": failure.error_type, "reason": failure.reason}
        ) from None
    request_id = body.request_id or str(uuid.uuid4())
    record = request_record(
        request_id=request_id,
        model_name=model_name,
        reason=body.reason,
        requested_by=actor,
        since=body.since,
        parameters=parameters,
        producer=deps.producer.name,
    )
    try:
        await deps.producer.publish(TRAINING_REQUESTED, record)
    except Exception as exc:
        if not is_transient(exc):
            raise
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            detail={
                "error": "kafka_unavailable",
                "reason": f"the request could not be published ({exc!r}); retry with the same request_id",
                "request_id": request_id,
            },
        ) from None
    run_id = run_id_of(request_id)
    return {
        "request_id": request_id,
        "run_id": run_id,
        "event_id": record.event_id,
        "correlation_id": record.correlation_id,
        "status_url": f"/v1/runs/{run_id}",
    }


@router.get("/runs", summary="Training runs, most recent first")
async def list_runs(
    deps: Deps,
    project: str | None = Query(None, description="Only the runs of this project's model."),
    model_name: str | None = None,
    run_status: Annotated[str | None, Query(alias="status", pattern="^(running|succeeded|failed)$")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> Any:
    if project is not None:
        of_project = [h.project.model.name for h in deps.training.by_model.values() if h.project.name == project]
        if not of_project or (model_name is not None and model_name not in of_project):
            return {"runs": []}
        model_name = of_project[0]
    return {"runs": await deps.store.list_runs(model_name=model_name, status=run_status, limit=limit)}


@router.get("/runs/{run_id}", summary="One run (by run id or by the id of its request)")
async def get_run(run_id: str, deps: Deps) -> Any:
    run = await deps.store.get_run(run_id) or await deps.store.get_run(run_id_of(run_id))
    if run is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            detail={"error": "not_found", "reason": f"no run {run_id} (a request shows up once consumed)"},
        )
    return run


@router.get("/champions", summary="The champion of each model, as announced on models.promoted")
async def champions(deps: Deps) -> Any:
    return {"champions": await deps.store.list_champions()}


@router.get("/examples", summary="How many vectors, labels and labelled examples training holds, per project")
async def examples(deps: Deps, project: str | None = Query(None, description="One project's counts only.")) -> Any:
    """Every project's counts (``{"projects": [...]}``), or one project's (``?project=NAME``)."""
    out = []
    for h in sorted(deps.training.by_model.values(), key=lambda h: h.project.name):
        if project is not None and h.project.name != project:
            continue
        fsv = h.runs.feature_set_version
        counts = await deps.store.example_counts(fsv, h.project.label.classes, h.project.name)
        out.append(
            {"project": h.project.name, "model_name": h.project.model.name, "feature_set_version": fsv, **counts}
        )
    if project is None:
        return {"projects": out}
    if not out:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, detail={"error": "not_found", "reason": f"no project {project!r}"}
        )
    return out[0]


@router.get("/triggers", summary="Decisions on automatic triggers (drift episodes: requested, cooldown…)")
async def triggers(deps: Deps, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> Any:
    return {"triggers": await deps.store.list_triggers(limit)}
