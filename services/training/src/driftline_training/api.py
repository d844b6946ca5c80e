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
from driftline_training.pipeline import OVERRIDABLE, TrainingFailure, effective_policy
from driftline_training.requests import request_record, run_id_of
from driftline_training.runs import Runs
from driftline_training.store import TrainingStore


@dataclass
class TrainingDeps:
    """The service's objects, as ``wire`` builds them: what the routes (and the benchmark) reach."""

    project: Project
    store: TrainingStore
    producer: EventProducer
    auth: TokenAuth
    runs: Runs


Deps = Annotated[TrainingDeps, Depends(wired)]


async def _actor(request: Request, deps: Deps) -> str:
    """The bearer token's actor (401 without a token, 403 with a wrong one)."""
    return await deps.auth(request)


Actor = Annotated[str, Depends(_actor)]


class TrainingRequestBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_name: str | None = Field(None, description="Model to train (default: the project's model).")
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
)
async def request_training(body: TrainingRequestBody, deps: Deps, actor: Actor) -> Any:
    model_name = body.model_name or deps.project.model.name
    if model_name != deps.project.model.name:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            detail={"error": "unknown_model", "reason": f"this project trains {deps.project.model.name!r} only"},
        )
    if body.reason == "drift":
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            detail={"error": "invalid_reason", "reason": "'drift' is reserved for drift-triggered runs"},
        )
    parameters = {k: str(v) for k, v in body.parameters.items()}
    try:
        effective_policy(deps.project.training, parameters)
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
    model_name: str | None = None,
    run_status: Annotated[str | None, Query(alias="status", pattern="^(running|succeeded|failed)$")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> Any:
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


@router.get("/examples", summary="How many vectors, labels and labelled examples training holds")
async def examples(deps: Deps) -> Any:
    counts = await deps.store.example_counts(deps.project.features.version, deps.project.label.classes)
    return {"feature_set_version": deps.project.features.version, **counts}


@router.get("/triggers", summary="Decisions on automatic triggers (drift episodes: requested, cooldown…)")
async def triggers(deps: Deps, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> Any:
    return {"triggers": await deps.store.list_triggers(limit)}
