"""Bearer-token auth for the write endpoints of every service.

Tokens come from the stack's settings (``StackSettings.api_tokens``: ``DRIFTLINE_API_TOKENS`` in
the environment or the stack's ``stack.env``): comma-separated ``actor=token`` pairs (a bare token
gets the actor name ``api``); the actor is what history records (who promoted, who rolled back).
In local mode, when none are set,
the well-known token ``driftline-local-token`` is accepted and a warning says so at start-up;
outside local mode a service refuses to start without tokens.
"""

from __future__ import annotations

import hmac

from fastapi import HTTPException, Request, status

from driftline.logging import get_logger
from driftline.settings import LOCAL_API_TOKEN, StackSettings

log = get_logger(__name__)


class TokenAuth:
    def __init__(self, tokens: list[str]) -> None:
        self._tokens: list[tuple[str, bytes]] = []
        for entry in tokens:
            actor, sep, token = entry.partition("=")
            if not sep:
                actor, token = "api", entry
            if token:
                self._tokens.append((actor.strip() or "api", token.strip().encode()))

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

    async def __call__(self, request: Request) -> str:
        """FastAPI dependency returning the actor: 401 without a bearer token, 403 with a wrong one."""
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                detail={"error": "unauthorized", "reason": "missing bearer token (Authorization: Bearer <token>)"},
                headers={"WWW-Authenticate": "Bearer"},
            )
        given = token.strip().encode()
        for actor, expected in self._tokens:
            if hmac.compare_digest(given, expected):
                return actor
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail={"error": "forbidden", "reason": "token not accepted"})
