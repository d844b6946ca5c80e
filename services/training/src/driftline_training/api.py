"""HTTP API of the training service: ask for a run, follow runs, see what training knows."""

# No `from __future__ import annotations` here: FastAPI must evaluate the route annotations,
# which refer to the auth dependency built inside build_router.

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from pydantic import BaseModel, ConfigDict, Field

from driftline.auth import TokenAuth
from driftline.catalog import TRAINING_REQUESTED
from driftline.events import derived_event_id
from driftline.kafka import EventProducer, is_transient
from driftline.project import Project
from driftline_training.handlers import request_record
from driftline_training.pipeline import OVERRIDABLE, TrainingFailure, effective_policy
from driftline_training.store import TrainingStore


@dataclass
class ApiContext:
    project: Project
    store: TrainingStore
    producer: EventProducer


def _ctx(request: Request) -> ApiContext:
    ctx: ApiContext | None = getattr(request.app.state, "ctx", None)
    if ctx is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail={"error": "starting"})
    return ctx


Ctx = Annotated[ApiContext, Depends(_ctx)]


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


def build_router(auth: TokenAuth) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["training"])

    @router.post(
        "/training-requests",
        status_code=status.HTTP_202_ACCEPTED,
        summary="Ask for a training run (published on training.requested; the run follows)",
    )
    async def request_training(body: TrainingRequestBody, ctx: Ctx, actor: Annotated[str, Depends(auth)]) -> Any:
        model_name = body.model_name or ctx.project.model.name
        if model_name != ctx.project.model.name:
            raise HTTPException(
                status.HTTP_404_NOT_FOUND,
                detail={"error": "unknown_model", "reason": f"this project trains {ctx.project.model.name!r} only"},
            )
        if body.reason == "drift":
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                detail={"error": "invalid_reason", "reason": "'drift' is reserved for drift-triggered runs"},
            )
        parameters = {k: str(v) for k, v in body.parameters.items()}
        try:
            effective_policy(ctx.project.training, parameters)
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
            producer=ctx.producer.name,
        )
        try:
            await ctx.producer.publish(TRAINING_REQUESTED, record)
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
        run_id = derived_event_id("run", request_id)
        return {
            "request_id": request_id,
            "run_id": run_id,
            "event_id": record["event_id"],
            "correlation_id": record["correlation_id"],
            "status_url": f"/v1/runs/{run_id}",
        }

    @router.get("/runs", summary="Training runs, most recent first")
    async def list_runs(
        ctx: Ctx,
        model_name: str | None = None,
        run_status: Annotated[str | None, Query(alias="status", pattern="^(running|succeeded|failed)$")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    ) -> Any:
        return {"runs": await ctx.store.list_runs(model_name=model_name, status=run_status, limit=limit)}

    @router.get("/runs/{run_id}", summary="One run (by run id or by the id of its request)")
    async def get_run(run_id: str, ctx: Ctx) -> Any:
        run = await ctx.store.get_run(run_id) or await ctx.store.get_run(derived_event_id("run", run_id))
        if run is None:
            raise HTTPException(
                status.HTTP_404_NOT_FOUND,
                detail={"error": "not_found", "reason": f"no run {run_id} (a request shows up once consumed)"},
            )
        return run

    @router.get("/champions", summary="The champion of each model, as announced on models.promoted")
    async def champions(ctx: Ctx) -> Any:
        return {"champions": await ctx.store.list_champions()}

    @router.get("/examples", summary="How many vectors, labels and labelled examples training holds")
    async def examples(ctx: Ctx) -> Any:
        counts = await ctx.store.example_counts(ctx.project.features.version, ctx.project.label.classes)
        return {"feature_set_version": ctx.project.features.version, **counts}

    @router.get("/triggers", summary="Decisions on automatic triggers (drift episodes: requested, cooldown…)")
    async def triggers(ctx: Ctx, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> Any:
        return {"triggers": await ctx.store.list_triggers(limit)}

    return router
