"""HTTP API of deployment: POST /v1/predict and GET /v1/deployment."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, status
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, model_validator

from driftline.records import DeploymentStatusChanged
from driftline.service import wired
from driftline_deployment.config import DeploymentSettings
from driftline_deployment.handlers import Deployer
from driftline_deployment.metrics import PREDICTIONS_MADE, SCORE_SECONDS
from driftline_deployment.slots import LoadedModel, ModelSlots
from driftline_ml.models import to_matrix


@dataclass(frozen=True)
class DeploymentDeps:
    """What the routes use, built by ``service.wire``."""

    settings: DeploymentSettings
    model_name: str  # the project's model: the default of POST /v1/predict
    slots: ModelSlots
    deployer: Deployer


Deps = Annotated[DeploymentDeps, Depends(wired)]

FeatureValue = StrictFloat | StrictInt | None


class PredictRequest(BaseModel):
    """One feature vector (``features``) or a batch (``instances``), by feature name."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="Model name (default: the project's model).")
    features: dict[str, FeatureValue] | None = Field(None, description="One feature vector.")
    instances: list[dict[str, FeatureValue]] | None = Field(None, min_length=1, description="A batch of vectors.")

    @model_validator(mode="after")
    def _one_of(self) -> PredictRequest:
        if (self.features is None) == (self.instances is None):
            raise ValueError("give exactly one of 'features' (one vector) or 'instances' (a batch)")
        return self

    def rows(self) -> list[dict[str, FeatureValue]]:
        return [self.features] if self.features is not None else list(self.instances or [])


class Prediction(BaseModel):
    score: float = Field(description="Probability of the positive class.")
    predicted_class: str


class PredictResponse(BaseModel):
    model_name: str
    model_version: int
    predictions: list[Prediction]


def _bad_request(reason: str, **extra: Any) -> HTTPException:
    return HTTPException(422, detail={"error": "invalid_features", "reason": reason, **extra})


def check_rows(rows: list[dict[str, FeatureValue]], model: LoadedModel) -> None:
    """Every vector names exactly the model's features (null for a missing value)."""
    expected = set(model.feature_names)
    for i, row in enumerate(rows):
        unknown = sorted(set(row) - expected)
        missing = sorted(expected - set(row))
        if unknown or missing:
            raise _bad_request(
                f"row {i}: the vector must name exactly the features of {model.model_name} "
                f"v{model.version} (null for a missing value)",
                unknown=unknown,
                missing=missing,
            )


def recent(s: DeploymentStatusChanged) -> dict[str, Any]:
    """A status change as GET /v1/deployment lists it."""
    return {
        "at": s.produced_at.isoformat(),
        "model_name": s.model_name,
        "version": s.version,
        "slot": s.slot,
        "status": s.status,
        "reason": s.reason,
        "promotion_event_id": s.causation_id,
    }


router = APIRouter(prefix="/v1", tags=["deployment"])


@router.post(
    "/predict",
    response_model=PredictResponse,
    summary="Score one feature vector or a batch with the champion",
    responses={413: {"description": "Too many vectors"}, 503: {"description": "No model loaded yet"}},
)
async def predict(body: PredictRequest, deps: Deps) -> PredictResponse:
    model_name = body.model or deps.model_name
    model = deps.slots.champion(model_name)  # one reference for the whole request
    if model is None:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            detail={"error": "no_model", "reason": f"no version of {model_name!r} is loaded yet"},
        )
    rows = body.rows()
    settings = deps.settings
    if len(rows) > settings.max_batch:
        raise HTTPException(
            413, detail={"error": "batch_too_large", "reason": f"at most {settings.max_batch} vectors per call"}
        )
    check_rows(rows, model)
    try:
        x = to_matrix(rows, model.feature_names)
    except ValueError as exc:
        raise _bad_request(str(exc)) from exc
    if len(rows) <= settings.inline_rows:
        scores, classes, seconds = model.timed_predict(x)
    else:
        scores, classes, seconds = await asyncio.to_thread(model.timed_predict, x)
    SCORE_SECONDS.labels("http").observe(seconds)
    PREDICTIONS_MADE.labels("http", model.slot).inc(len(rows))
    return PredictResponse(
        model_name=model.model_name,
        model_version=model.version,
        predictions=[Prediction(score=float(s), predicted_class=c) for s, c in zip(scores, classes, strict=True)],
    )


@router.get("/deployment", summary="What is loaded, since when, and why")
async def deployment(deps: Deps) -> dict[str, Any]:
    slots = deps.slots
    return {
        "instance_id": deps.settings.instance_id,
        "model_name": deps.model_name,
        "replayed": deps.deployer.replayed,
        "models": {
            name: {
                "champion": (m.describe() if (m := slots.champion(name)) else None),
                "challenger": (c.describe() if (c := slots.challenger(name)) else None),
            }
            for name in slots.models()
        },
        "recent": [recent(s) for s in reversed(deps.deployer.history)],
    }
