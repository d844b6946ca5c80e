"""HTTP API of deployment: POST /v1/predict (a raw event or a ready vector, one or a batch) and
GET /v1/deployment. Each row is served by the champion, or by the model's canary when the canary
serves its entity (see :class:`driftline_deployment.slots.Split`). Every prediction served is
published to ``predictions`` (see :mod:`driftline_deployment.publish`: without a broker round trip
in the request)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from typing import Annotated, Any

import asyncpg
from fastapi import APIRouter, Depends, HTTPException, status
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, model_validator

from driftline.events import derived_event_id, envelope, now_utc
from driftline.records import DeploymentStatusChanged, PredictionMade
from driftline.service import wired
from driftline_deployment.config import DeploymentSettings
from driftline_deployment.features import InvalidEvents, RawEventFeatures, ServedEvent
from driftline_deployment.handlers import Deployer
from driftline_deployment.metrics import PREDICTIONS_MADE, SCORE_SECONDS
from driftline_deployment.publish import PredictionPublisher
from driftline_deployment.slots import LoadedModel, ModelSlots, Served, Split, by_row, canary_rows


@dataclass(frozen=True)
class DeploymentDeps:
    """What the routes use, built by ``service.wire``."""

    settings: DeploymentSettings
    model_name: str  # the project's model: the default of POST /v1/predict
    slots: ModelSlots
    deployer: Deployer
    raw: RawEventFeatures  # a raw event's vector, as the features service computes it
    publisher: PredictionPublisher  # every served prediction to the predictions topic


Deps = Annotated[DeploymentDeps, Depends(wired)]

FeatureValue = StrictFloat | StrictInt | None


class PredictRequest(BaseModel):
    """A raw event (``event``) or a batch of them (``events``), shaped as ingestion's POST
    /v1/events takes them; or a ready feature vector (``features``) or a batch (``instances``)."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(
        None, description="Model name (default: the model of the events' project, else the configured project's)."
    )
    event: dict[str, Any] | None = Field(
        None, description="One raw event: type, payload, and optional event_id, event_time, correlation_id."
    )
    events: list[dict[str, Any]] | None = Field(None, min_length=1, description="A batch of raw events.")
    features: dict[str, FeatureValue] | None = Field(None, description="One feature vector.")
    instances: list[dict[str, FeatureValue]] | None = Field(None, min_length=1, description="A batch of vectors.")

    @model_validator(mode="after")
    def _one_of(self) -> PredictRequest:
        given = [x for x in (self.event, self.events, self.features, self.instances) if x is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of 'event' or 'events' (raw events), 'features' or 'instances' (ready vectors)"
            )
        return self

    def raw_events(self) -> list[dict[str, Any]] | None:
        if self.event is not None:
            return [self.event]
        return list(self.events) if self.events is not None else None

    def rows(self) -> list[dict[str, FeatureValue]]:
        return [self.features] if self.features is not None else list(self.instances or [])


class Prediction(BaseModel):
    score: float = Field(description="Probability of the positive class.")
    predicted_class: str
    prediction_id: str = Field(
        description="The id a label names (POST /v1/labels of ingestion, as prediction_id): the raw event's "
        "event_id, or a new id for a ready vector."
    )
    entity_id: str = Field(description="The entity (a label gives it too): the event's, or the prediction id.")
    model_version: int = Field(description="The version that served it: the champion's, or the canary's.")
    slot: str = Field(description="champion, or canary when the model's canary serves the entity.")
    features: dict[str, float | str | None] | None = Field(
        None, description="For a raw event: the feature vector that was scored, in the feature set's order."
    )


class PredictResponse(BaseModel):
    model_name: str
    model_version: int = Field(description="The champion's version (a prediction names the version that served it).")
    request_id: str = Field(description="Correlation id of the predictions of a request of ready vectors.")
    predictions: list[Prediction]


def _bad_request(reason: str, **extra: Any) -> HTTPException:
    return HTTPException(422, detail={"error": "invalid_features", "reason": reason, **extra})


def check_rows(
    rows: list[dict[str, FeatureValue]],
    model: LoadedModel,
    canary: LoadedModel | None = None,
    picked: Collection[int] = (),
) -> None:
    """Every vector names exactly the features of the model that scores it (null for a missing
    value): ``canary``'s for the rows at ``picked`` (see :func:`canary_rows`), ``model``'s (the
    champion's) for the others."""
    on_canary = set(picked) if canary is not None else set()
    for i, row in enumerate(rows):
        scorer = canary if canary is not None and i in on_canary else model
        expected = set(scorer.feature_names)
        unknown = sorted(set(row) - expected)
        missing = sorted(expected - set(row))
        if unknown or missing:
            raise _bad_request(
                f"row {i}: the vector must name exactly the features of {scorer.model_name} "
                f"v{scorer.version} (null for a missing value)",
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
    summary="Score one feature vector or a batch with the champion (and the canary for its entities)",
    responses={413: {"description": "Too many vectors"}, 503: {"description": "No model loaded yet"}},
)
async def predict(body: PredictRequest, deps: Deps) -> PredictResponse:
    settings = deps.settings
    items = body.raw_events()
    count = len(items) if items is not None else len(body.rows())
    if count > settings.max_batch:
        raise HTTPException(
            413, detail={"error": "batch_too_large", "reason": f"at most {settings.max_batch} per call"}
        )
    model_name = body.model or _model_of_events(items, deps) or deps.model_name
    model = deps.slots.champion(model_name)  # one reference of each slot for the whole request
    challenger = deps.slots.challenger(model_name)
    canary = challenger if challenger is not None and challenger.is_canary else None
    if model is None:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            detail={"error": "no_model", "reason": f"no version of {model_name!r} is loaded yet"},
        )
    served: list[ServedEvent] | None = None
    if items is not None:
        served = await _raw_event_features(items, deps)
        rows: list[dict[str, Any]] = [s.features for s in served]
        sources = [s.raw.event_id for s in served]
        entities = [s.raw.entity_id for s in served]
        picked = canary_rows(canary, entities)
    else:
        rows = body.rows()
        sources = [str(uuid.uuid4()) for _ in rows]  # a ready vector's prediction id is its entity too
        picked = canary_rows(canary, sources)
        check_rows(rows, model, canary, picked)
    try:
        split = Split.of(model, rows, canary, picked)  # a raw event's vector: as the stream scores it
    except ValueError as exc:
        raise _bad_request(str(exc)) from exc
    if len(rows) <= settings.inline_rows:
        parts = split.predict()
    else:
        parts = await asyncio.to_thread(split.predict)
    for part in parts:
        SCORE_SECONDS.labels("http").observe(part.seconds)
        PREDICTIONS_MADE.labels("http", part.model.prediction_slot).inc(len(part.rows))
    request_id = str(uuid.uuid4())
    answers: list[Prediction] = []
    records: list[PredictionMade] = []
    for i, (part, score, predicted) in enumerate(by_row(parts)):
        event = served[i] if served is not None else None
        record = _prediction_record(part, event, sources[i], request_id, score, predicted)
        records.append(record)
        answers.append(
            Prediction(
                score=record.score,
                predicted_class=predicted,
                prediction_id=record.source_event_id,
                entity_id=record.entity_id,
                model_version=record.model_version,
                slot=record.slot,
                features=event.features if event is not None else None,
            )
        )
    await deps.publisher.submit(records)  # enqueued, not awaited: see driftline_deployment.publish
    return PredictResponse(
        model_name=model.model_name, model_version=model.version, request_id=request_id, predictions=answers
    )


def _model_of_events(items: list[dict[str, Any]] | None, deps: DeploymentDeps) -> str | None:
    """The one model of the events' projects (422 when they belong to several)."""
    if not items:
        return None
    names = {deps.raw.model_of(item) for item in items} - {None}
    if len(names) > 1:
        raise HTTPException(
            422,
            detail={"error": "several_models", "reason": f"the events belong to several models: {sorted(names)}"},  # type: ignore[type-var]
        )
    return names.pop() if names else None


async def _raw_event_features(items: list[dict[str, Any]], deps: DeploymentDeps) -> list[ServedEvent]:
    try:
        return await deps.raw.compute(items)
    except InvalidEvents as exc:
        raise HTTPException(422, detail={"error": "invalid_event", "reason": str(exc), "errors": exc.errors}) from exc
    except (asyncpg.PostgresError, OSError) as exc:  # the online store is down or not migrated yet
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            detail={"error": "online_store_unavailable", "reason": f"{type(exc).__name__}: {exc}"[:300]},
            headers={"Retry-After": "1"},
        ) from exc


def _prediction_record(
    part: Served, event: ServedEvent | None, source: str, request_id: str, score: float, predicted: str
) -> PredictionMade:
    """The ``predictions`` record of one HTTP prediction by ``part.model``. Its source event is the
    raw event (a label of the event joins it, as for stream traffic) or, for a ready vector, a new
    id (``source``): the prediction id the client labels, and its entity. Its id derives from that,
    the model version and the slot, so a stream prediction of the same raw event is another record,
    and a retried raw event the same one."""
    model = part.model
    if event is not None:
        raw = event.raw
        entity, event_time, cause = raw.entity_id, raw.event_time, raw
    else:
        entity, event_time, cause = source, now_utc(), None
    return PredictionMade(
        **envelope(
            "deployment",
            cause=cause,
            correlation_id=None if cause is not None else request_id,
            event_time=event_time,
            event_id=derived_event_id(source, model.model_name, model.version, model.prediction_slot, "http"),
        ),
        source_event_id=source,
        entity_id=entity,
        model_name=model.model_name,
        model_version=model.version,
        slot=model.prediction_slot,
        shadow=model.shadow,
        score=score,
        predicted_class=predicted,
        scoring_latency_ms=part.latency_ms,
        served="http",
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
