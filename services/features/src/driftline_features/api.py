"""HTTP routes: the online store's latest vector per entity."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, Depends, HTTPException, Query, status
from pydantic import BaseModel, Field

from driftline.service import wired


class LatestReader(Protocol):
    async def latest(self, entity_id: str, feature_set_version: str, project: str = "") -> dict[str, Any] | None: ...


class OnlineStoreDeps(Protocol):
    """What the routes need of the service's deps (``FeaturesDeps`` in service.py)."""

    @property
    def store(self) -> LatestReader: ...

    def current_versions(self) -> dict[str, str]:
        """Each project's current feature-set version, by project name."""
        ...


Deps = Annotated[OnlineStoreDeps, Depends(wired)]


class FeatureVectorOut(BaseModel):
    project: str = Field(description="The project whose feature set computed it ('' before projects were data).")
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
    project: str | None = Query(None, min_length=1, description="Project (default: the only one, when there is one)."),
    version: str | None = Query(
        None, min_length=1, description="Feature-set version (default: the project's current one)."
    ),
) -> FeatureVectorOut:
    versions = deps.current_versions()
    if project is None:
        if len(versions) != 1:
            raise HTTPException(
                status.HTTP_400_BAD_REQUEST,
                detail={
                    "error": "project_required",
                    "reason": f"this install has {len(versions)} projects: name one with ?project= "
                    f"({', '.join(sorted(versions)) or 'none applied'})",
                },
            )
        project = next(iter(versions))
    if project not in versions and version is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            detail={"error": "not_found", "reason": f"no project {project!r} (known: {', '.join(sorted(versions))})"},
        )
    v = version if version is not None else versions[project]
    row = await deps.store.latest(entity_id, v, project)
    if row is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            detail={
                "error": "not_found",
                "reason": f"no feature vector for entity {entity_id!r} (project {project!r}, version {v!r})",
            },
        )
    return FeatureVectorOut.model_validate(row)
