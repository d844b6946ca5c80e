"""HTTP routes: the online store's latest vector per entity."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol

from fastapi import APIRouter, HTTPException, Query, status
from pydantic import BaseModel, Field


class LatestReader(Protocol):
    async def latest(self, entity_id: str, feature_set_version: str) -> dict[str, Any] | None: ...


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


def router(store: Callable[[], LatestReader], current_version: Callable[[], str]) -> APIRouter:
    r = APIRouter(prefix="/v1", tags=["features"])

    @r.get(
        "/features/{entity_id}",
        summary="Latest feature vector of an entity (by event time)",
        responses={404: {"description": "No vector for this entity and feature-set version"}},
    )
    async def latest_vector(
        entity_id: str,
        version: str | None = Query(None, description="Feature-set version (default: the project's current one)."),
    ) -> FeatureVectorOut:
        v = version or current_version()
        row = await store().latest(entity_id, v)
        if row is None:
            raise HTTPException(
                status.HTTP_404_NOT_FOUND,
                detail={"error": "not_found", "reason": f"no feature vector for entity {entity_id!r} (version {v!r})"},
            )
        return FeatureVectorOut.model_validate(row)

    return r
