"""HTTP API of monitoring: GET /v1/drift, GET /v1/reports, and a page with plots at GET /."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import HTMLResponse

from driftline_monitoring import page

if TYPE_CHECKING:
    from driftline_monitoring.bootstrap import MonitoringService


def router(service: MonitoringService) -> APIRouter:
    api = APIRouter()

    def ready() -> Any:
        if service.monitoring is None or service.store is None:
            raise HTTPException(503, detail={"error": "starting", "reason": "monitoring is starting"})
        return service.monitoring, service.store

    @api.get("/v1/drift", tags=["monitoring"], summary="Current drift statistics per model and feature")
    async def drift() -> dict[str, Any]:
        monitoring, store = ready()
        models = monitoring.state()
        # Models this instance does not monitor (yet) still show their last stored check.
        known = {m["model_name"] for m in models}
        stored = [s for s in await store.latest_summaries() if s["model_name"] not in known]
        return {"policy": service.policy.model_dump(), "models": models, "last_stored_checks": stored}

    @api.get("/v1/reports", tags=["monitoring"], summary="Drift reports (one per episode), newest first")
    async def reports(
        model: str | None = Query(None, description="Only this model."),
        open_only: bool = Query(False, alias="open", description="Only episodes still open."),
        limit: int = Query(50, ge=1, le=1000),
    ) -> dict[str, Any]:
        _, store = ready()
        return {"reports": await store.reports(model_name=model, open_only=open_only, limit=limit)}

    @api.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        _, store = ready()
        names = await store.models()
        models = [(n, await store.summaries(n, limit=service.settings.page_checks)) for n in names]
        html = page.render(
            models,
            await store.reports(limit=20),
            psi_threshold=service.policy.psi_threshold,
            accuracy_drop=service.policy.accuracy_drop,
        )
        return HTMLResponse(html)

    return api
