"""FastAPI app factory: every service gets /healthz, /readyz (checks its dependencies) and /metrics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any

from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest

from driftline import tracing

HTTP_REQUESTS = Counter("driftline_http_requests_total", "HTTP requests", ["service", "route", "method", "status"])
HTTP_LATENCY = Histogram(
    "driftline_http_request_seconds",
    "HTTP request latency",
    ["service", "route", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)

ReadinessCheck = Callable[[], Awaitable[Any]]


class _StatusNotingSend:
    """An ASGI ``send`` that remembers the response's status code (500 until one is sent)."""

    def __init__(self, send: Any) -> None:
        self.send = send
        self.status = 500

    async def __call__(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        await self.send(message)


class _MetricsMiddleware:
    """Counts and times every HTTP request by route template, as a plain ASGI middleware
    (Starlette's BaseHTTPMiddleware costs about half a millisecond per request)."""

    def __init__(self, app: Any, service: str) -> None:
        self.app = app
        self.service = service
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        noting = _StatusNotingSend(send)
        try:
            await self.app(scope, receive, noting)
        finally:
            status = noting.status
            route = getattr(scope.get("route"), "path", "unmatched")  # the router sets it on this scope
            key = (route, scope["method"], status)
            children = self._children.get(key)
            if children is None:
                children = (
                    HTTP_REQUESTS.labels(self.service, route, scope["method"], str(status)),
                    HTTP_LATENCY.labels(self.service, route, scope["method"]),
                )
                self._children[key] = children
            children[0].inc()
            children[1].observe(time.perf_counter() - start)


OPS_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


class _TracingMiddleware:
    """A SERVER span per request (not for the probes and scrapes of OPS_PATHS), continuing the
    caller's W3C traceparent: what the request produces to Kafka carries its trace on."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") in OPS_PATHS:
            await self.app(scope, receive, send)
            return
        noting = _StatusNotingSend(send)
        with tracing.http_server_span(scope["method"], scope.get("path", ""), scope.get("headers", [])) as span:
            try:
                await self.app(scope, receive, noting)
            finally:
                status = noting.status
                route = getattr(scope.get("route"), "path", None)
                if route is not None:
                    span.update_name(f"{scope['method']} {route}")
                    span.set_attribute("http.route", route)
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(tracing.StatusCode.ERROR)


class _NulRefusingMiddleware:
    """Refuses (400) a request whose path or query holds a NUL character: no PostgreSQL text
    column can hold one, so it would otherwise fail deep in a handler as a server error."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            query: bytes = scope.get("query_string", b"")
            if "\x00" in scope.get("path", "") or b"%00" in query or b"\x00" in query:
                response = JSONResponse(
                    {"detail": {"error": "invalid_request", "reason": "the path or query holds a NUL character"}},
                    status_code=400,
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(
    service: str,
    *,
    title: str,
    description: str = "",
    version: str = "0.1.0",
    lifespan: Callable[[FastAPI], AbstractAsyncContextManager[None]] | None = None,
    readiness: Callable[[], Mapping[str, ReadinessCheck]] | None = None,
) -> FastAPI:
    """A FastAPI app with the platform's standard endpoints.

    ``readiness`` returns the checks to run (name → async callable that raises when the
    dependency is not usable); it is called per request, so checks can be wired at start-up.
    """
    app = FastAPI(title=title, description=description, version=version, lifespan=lifespan)

    app.add_middleware(_NulRefusingMiddleware)
    app.add_middleware(_MetricsMiddleware, service=service)
    app.add_middleware(_TracingMiddleware)

    @app.get("/healthz", tags=["ops"], summary="Liveness: the process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "service": service}

    @app.get(
        "/readyz",
        tags=["ops"],
        summary="Readiness: every dependency answers",
        responses={503: {"description": "Not ready: a dependency does not answer (see checks)"}},
    )
    async def readyz() -> JSONResponse:
        checks = dict(readiness() if readiness else {})
        results: dict[str, str] = {}

        async def run(name: str, check: ReadinessCheck) -> None:
            try:
                await asyncio.wait_for(check(), timeout=5)
                results[name] = "ok"
            except Exception as exc:
                results[name] = f"failed: {exc!r}"[:300]

        await asyncio.gather(*(run(n, c) for n, c in checks.items()))
        ready = all(v == "ok" for v in results.values())
        return JSONResponse({"ready": ready, "service": service, "checks": results}, status_code=200 if ready else 503)

    @app.get("/metrics", tags=["ops"], summary="Prometheus metrics")
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app
