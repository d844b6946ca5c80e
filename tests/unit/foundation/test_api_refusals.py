"""Input no handler can use is refused with a 4xx at the edge of every service's app."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.testclient import TestClient

from driftline.api import create_app


def app_with_echo() -> TestClient:
    app = create_app("test", title="test")
    router = APIRouter()

    @router.get("/v1/echo/{name}")
    async def echo(name: str, q: str = "") -> dict[str, str]:
        return {"name": name, "q": q}

    app.include_router(router)
    return TestClient(app)


def test_a_nul_character_in_the_query_or_path_is_a_400_with_a_reason() -> None:
    client = app_with_echo()
    assert client.get("/v1/echo/a", params={"q": "x"}).json() == {"name": "a", "q": "x"}
    for url in ("/v1/echo/a?q=x%00y", "/v1/echo/a%00b"):
        r = client.get(url)
        assert r.status_code == 400, (url, r.text)
        assert "NUL" in r.json()["detail"]["reason"]


def test_readiness_documents_its_503() -> None:
    # API fuzzing allows a 5xx only where the OpenAPI documents it: /readyz answers 503 when not ready.
    responses = app_with_echo().get("/openapi.json").json()["paths"]["/readyz"]["get"]["responses"]
    assert "503" in responses and "dependency" in responses["503"]["description"]
