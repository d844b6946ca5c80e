"""Bearer-token auth, with scopes per token.

Tokens come from the stack's settings (``StackSettings.api_tokens``: ``DRIFTLINE_API_TOKENS`` in
the environment or the stack's ``stack.env``): comma-separated entries ``actor=token`` or
``actor:scope+scope=token`` (a bare ``token`` gets the actor name ``api``); the actor is what
history records (who promoted, who rolled back). Scopes:

* ``read`` — every GET endpoint under the services' APIs (not /healthz, /readyz, /metrics, /docs);
* ``predict`` — deployment's ``POST /v1/predict``;
* ``write`` — every endpoint that changes something (events, labels, training requests,
  promotions, rollbacks);
* ``admin`` — every scope. An entry without scopes is an admin token (what every token was before
  scopes existed).

Write endpoints always need a token (:meth:`TokenAuth.__call__` checks ``write``). Read endpoints
and predict need one only outside local mode (:class:`ScopeMiddleware`, added to every service's
app by :mod:`driftline.service`). In local mode, when no tokens are set, the well-known token
``driftline-local-token`` is accepted with every scope and a warning says so at start-up; outside
local mode a service refuses to start without tokens.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import Any

from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse

from driftline.logging import get_logger
from driftline.settings import LOCAL_API_TOKEN, StackSettings

log = get_logger(__name__)

SCOPES = ("read", "predict", "write", "admin")
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/docs", "/openapi.json", "/docs/oauth2-redirect"})


class AuthError(Exception):
    def __init__(self, status_code: int, error: str, reason: str) -> None:
        super().__init__(reason)
        self.status_code, self.error, self.reason = status_code, error, reason

    def http(self) -> HTTPException:
        headers = {"WWW-Authenticate": "Bearer"} if self.status_code == 401 else None
        return HTTPException(self.status_code, detail={"error": self.error, "reason": self.reason}, headers=headers)


def parse_entry(entry: str) -> tuple[str, frozenset[str], str] | None:
    """``actor[:scope+scope]=token`` (or a bare token) → (actor, scopes, token); ValueError for an
    unknown scope."""
    head, sep, token = entry.partition("=")
    if not sep:
        head, token = "api", entry
    token = token.strip()
    if not token:
        return None
    actor, colon, scope_text = head.partition(":")
    scopes = frozenset(s.strip() for s in scope_text.split("+") if s.strip()) if colon else frozenset({"admin"})
    unknown = sorted(scopes - set(SCOPES))
    if unknown or not scopes:
        known = ", ".join(SCOPES)
        raise ValueError(f"token of {actor.strip() or 'api'!r}: unknown scope(s) {unknown} (known: {known})")
    return actor.strip() or "api", scopes, token


class TokenAuth:
    def __init__(self, tokens: list[str]) -> None:
        self._tokens: list[tuple[str, frozenset[str], bytes]] = []
        for entry in tokens:
            parsed = parse_entry(entry)
            if parsed is not None:
                actor, scopes, token = parsed
                self._tokens.append((actor, scopes, token.encode()))

    @classmethod
    def from_settings(cls, stack: StackSettings, service: str) -> TokenAuth:
        raw = stack.api_tokens.get_secret_value()
        tokens = [t.strip() for t in raw.split(",") if t.strip()]
        if not tokens:
            if not stack.local_mode:
                raise RuntimeError("DRIFTLINE_API_TOKENS is empty and DRIFTLINE_LOCAL_MODE=false: refusing to start")
            log.warning(
                "insecure_local_token",
                service=service,
                message=f"no DRIFTLINE_API_TOKENS set: accepting the local-mode token {LOCAL_API_TOKEN!r}; "
                "never run like this outside a developer machine",
            )
            tokens = [f"local={LOCAL_API_TOKEN}"]
        return cls(tokens)

    def check(self, authorization: str, scope: str) -> str:
        """The actor of an ``Authorization`` header whose token has ``scope`` (or admin); AuthError
        401 without a bearer token, 403 with a wrong one or one without the scope."""
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise AuthError(401, "unauthorized", "missing bearer token (Authorization: Bearer <token>)")
        given = token.strip().encode()
        for actor, scopes, expected in self._tokens:
            if hmac.compare_digest(given, expected):
                if scope in scopes or "admin" in scopes:
                    return actor
                raise AuthError(403, "forbidden", f"the token of {actor!r} lacks the {scope!r} scope")
        raise AuthError(403, "forbidden", "token not accepted")

    async def __call__(self, request: Request) -> str:
        """FastAPI dependency of write endpoints: the actor, or 401/403 (see :meth:`check`)."""
        try:
            return self.check(request.headers.get("authorization", ""), "write")
        except AuthError as exc:
            raise exc.http() from None


class ScopeMiddleware:
    """Outside local mode: GET/HEAD requests (but the probes and the API docs) need the ``read``
    scope, the paths in ``scopes`` (e.g. ``{"/v1/predict": "predict"}``) theirs. A plain ASGI
    middleware: one header lookup and a constant-time compare per request."""

    def __init__(self, app: Any, auth: TokenAuth, scopes: Mapping[str, str]) -> None:
        self.app = app
        self.auth = auth
        self.scopes = dict(scopes)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            path: str = scope.get("path", "")
            needed = self.scopes.get(path)
            if needed is None and scope["method"] in ("GET", "HEAD") and path not in OPEN_PATHS:
                needed = "read"
            if needed is not None:
                header = next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"authorization"), "")
                try:
                    self.auth.check(header, needed)
                except AuthError as exc:
                    headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
                    body = {"detail": {"error": exc.error, "reason": exc.reason}}
                    await JSONResponse(body, status_code=exc.status_code, headers=headers)(scope, receive, send)
                    return
        await self.app(scope, receive, send)
