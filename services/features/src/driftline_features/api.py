"""HTTP routes: the online store's latest vector per entity."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, Depends, HTTPException, Query, status
from pydantic import BaseModel, Field

from driftline.service import wired


class LatestReader(Protocol):
    async def latest(self, entity_id: str, feature_set_version: str) -> dict[str, Any] | None: ...


class OnlineStoreDeps(Protocol):
    """What the routes need of the service's deps (``FeaturesDeps`` in service.py)."""

    @property
    def store(self) -> LatestReader: ...

    @property
    def feature_set_version(self) -> str: ...


Deps = Annotated[OnlineStoreDeps, Depends(wired)]


class FeatureVectorOut(BaseModel):
    entity_id: str
    feature_set_version: str
    event_id: str = Field(description="Id of the vector (derived from the raw event id and the version).")
    source_event_id: str = Field(description="The raw event the vector was computed for.")
    event_time: datetime
    features: dict[str, float | str | None]
    late: bool
    correlation_id: str
    updated_at: datetime


router = APIRouter(prefix="/v1", tags=["features"])


@router.get(
    "/features/{entity_id}",
    summary="Latest feature vector of an entity (by event time)",
    responses={404: {"description": "No vector for this entity and feature-set version"}},
)
async def latest_vector(
    entity_id: str,
    deps: Deps,
    version: str | None = Query(None, description="Feature-set version (default: the project's current one)."),
) -> FeatureVectorOut:
    v = version or deps.feature_set_version
    row = await deps.store.latest(entity_id, v)
    if row is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            detail={"error": "not_found", "reason": f"no feature vector for entity {entity_id!r} (version {v!r})"},
        )
    return FeatureVectorOut.model_validate(row)
