"""HTTP API of the registry: models, versions, lineage and history; promote, shadow, canary, rollback."""

from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field

from driftline.auth import TokenAuth
from driftline.projects import ProjectBook
from driftline.service import wired
from driftline_registry.card import model_card
from driftline_registry.handlers import ActionResult, Conflict, NotFound, RegistryHandlers

STAGES = "^(candidate|champion|rejected|archived|rolled_back)$"


@dataclass(frozen=True)
class RegistryDeps:
    """What the routes reach through ``Depends(wired)``."""

    handlers: RegistryHandlers
    auth: TokenAuth
    projects: ProjectBook = field(default_factory=ProjectBook)


Deps = Annotated[RegistryDeps, Depends(wired)]


async def _actor(request: Request, deps: Deps) -> str:
    """The token's actor (401 without a token, 403 with a wrong one)."""
    actor: str = await deps.auth(request)
    return actor


Actor = Annotated[str, Depends(_actor)]
MAX_VERSION = 2**31 - 1  # the versions' integer column
Version = Annotated[int, Path(ge=1, le=MAX_VERSION, description="Version number (monotonic per model).")]


class ActionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(None, max_length=2000, description="Why (kept in the history).")


class CanaryBody(ActionBody):
    fraction: float = Field(
        0.1, gt=0, le=1, description="Share of the model's entities the canary serves (split by entity id)."
    )


class RollbackBody(ActionBody):
    to_version: int | None = Field(
        None, ge=1, le=MAX_VERSION, description="Version to bring back (default: the previous champion)."
    )


def _not_found(what: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, detail={"error": "not_found", "reason": what})


def _action_response(result: ActionResult, response: Response) -> dict[str, Any]:
    r = result.record
    if not result.published:
        response.status_code = status.HTTP_202_ACCEPTED  # stored; the outbox relay publishes it
    return {
        "model_name": r.model_name,
        "version": r.version,
        "previous_version": r.previous_version,
        "action": r.action,
        "actor": r.actor,
        "reason": r.reason,
        "event_id": r.event_id,
        "correlation_id": r.correlation_id,
        "published": result.published,
    }


async def _act(action: Awaitable[ActionResult]) -> ActionResult:
    try:
        return await action
    except NotFound as exc:
        raise _not_found(str(exc)) from None
    except Conflict as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, detail={"error": "conflict", "reason": str(exc)}) from None


router = APIRouter(prefix="/v1/models", tags=["registry"])


@router.get("", summary="Every model with its champion, challenger and latest version (and its project)")
async def list_models(
    deps: Deps,
    project: str | None = Query(None, description="Only the model of this project."),
    model: str | None = Query(None, description="Only this model."),
) -> Any:
    models = await deps.handlers.store.list_models()
    for m in models:
        applied = deps.projects.by_model(m["name"])
        m["project"] = applied.name if applied is not None else None
    if project is not None:
        models = [m for m in models if m["project"] == project]
    if model is not None:
        models = [m for m in models if m["name"] == model]
    return {"models": models}


@router.get("/{name}", summary="One model")
async def get_model(name: str, deps: Deps) -> Any:
    model = await deps.handlers.store.get_model(name)
    if model is None:
        raise _not_found(f"no model {name!r}")
    return model


@router.get("/{name}/versions", summary="A model's versions, oldest first")
async def list_versions(name: str, deps: Deps, stage: Annotated[str | None, Query(pattern=STAGES)] = None) -> Any:
    if await deps.handlers.store.get_model(name) is None:
        raise _not_found(f"no model {name!r}")
    return {"model_name": name, "versions": await deps.handlers.store.list_versions(name, stage)}


@router.get(
    "/{name}/versions/{version}",
    summary="One version's model card: training set, params, holdout metrics, champion comparison, lineage "
    "and full stage history",
)
async def get_version(name: str, version: Version, deps: Deps) -> Any:
    row = await deps.handlers.store.get_version(name, version)
    if row is None:
        raise _not_found(f"{name} has no version {version}")
    model = await deps.handlers.store.get_model(name)
    assert model is not None
    history = await deps.handlers.store.history(name, version=version, limit=None)
    return {
        **row,
        "is_champion": model["champion_version"] == version,
        "is_challenger": model["challenger_version"] == version,
        "is_canary": model["challenger_version"] == version and model["canary_fraction"] is not None,
        **model_card(row, history),
        "history": history,
    }


@router.get("/{name}/history", summary="Stage history: promotions, rejections, rollbacks, deployments")
async def history(name: str, deps: Deps, limit: Annotated[int, Query(ge=1, le=5000)] = 500) -> Any:
    if await deps.handlers.store.get_model(name) is None:
        raise _not_found(f"no model {name!r}")
    return {"model_name": name, "history": await deps.handlers.store.history(name, limit=limit)}


@router.post("/{name}/versions/{version}/promote", summary="Make a version the champion (models.promoted)")
async def promote(
    name: str, version: Version, deps: Deps, actor: Actor, response: Response, body: ActionBody | None = None
) -> Any:
    reason = body.reason if body else None
    return _action_response(await _act(deps.handlers.promote(name, version, actor=actor, reason=reason)), response)


@router.post(
    "/{name}/versions/{version}/shadow",
    summary="Deploy a version as the challenger, scored in shadow (models.promoted, action shadow)",
)
async def shadow(
    name: str, version: Version, deps: Deps, actor: Actor, response: Response, body: ActionBody | None = None
) -> Any:
    reason = body.reason if body else None
    return _action_response(await _act(deps.handlers.shadow(name, version, actor=actor, reason=reason)), response)


@router.post(
    "/{name}/versions/{version}/canary",
    summary="Deploy a version as a canary serving a share of the entities (models.promoted, action canary)",
)
async def canary(
    name: str, version: Version, deps: Deps, actor: Actor, response: Response, body: CanaryBody | None = None
) -> Any:
    body = body or CanaryBody()
    result = await _act(deps.handlers.canary(name, version, fraction=body.fraction, actor=actor, reason=body.reason))
    return {**_action_response(result, response), "traffic_fraction": result.record.traffic_fraction}


@router.post(
    "/{name}/canary/rollback",
    summary="Withdraw the canary: the champion serves every entity again (models.promoted, action canary_rollback)",
)
async def end_canary(name: str, deps: Deps, actor: Actor, response: Response, body: ActionBody | None = None) -> Any:
    reason = body.reason if body else None
    return _action_response(await _act(deps.handlers.end_canary(name, actor=actor, reason=reason)), response)


@router.post("/{name}/rollback", summary="Bring back the previous champion (models.promoted, action rollback)")
async def rollback(name: str, deps: Deps, actor: Actor, response: Response, body: RollbackBody | None = None) -> Any:
    reason, to_version = (body.reason, body.to_version) if body else (None, None)
    return _action_response(
        await _act(deps.handlers.rollback(name, actor=actor, reason=reason, to_version=to_version)), response
    )
