"""Project file, profiles, safe model files, settings, auth and retries."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import skops.io as sio
import yaml
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import ValidationError

from driftline.auth import TokenAuth
from driftline.project import EXAMPLE_PROJECT, load_project, parse_duration
from driftline.retry import Backoff, PoisonRecord, TransientError, is_transient, retry_transient
from driftline.settings import StackSettings
from driftline_ml import models, profiles

# --- project file -------------------------------------------------------------------------------


def test_the_example_project_loads() -> None:
    p = load_project()
    assert p.event.entity_key == "customer_id"
    assert "loan_to_income" in p.features.names
    assert set(p.model_features) <= set(p.features.names)
    assert p.features.windows[0].window.step_s == 900


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"model": {"name": "m", "estimator": "os.system"}}, "scikit-learn"),
        ({"label": {"classes": ["a", "b"], "positive_class": "c"}}, "positive_class"),
        ({"features": {"version": "1", "raw": ["a", "a"]}}, "defined twice"),
        ({"features": {"version": "1", "raw": ["a"], "derived": [{"name": "b"}]}}, "exactly one of"),
    ],
)
def test_an_invalid_project_is_refused_with_a_reason(tmp_path: Path, patch: dict, message: str) -> None:
    doc = yaml.safe_load(EXAMPLE_PROJECT.read_text())
    doc.update(patch)
    if "model" not in patch:
        doc["model"].pop("features", None)
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(ValidationError, match=message):
        load_project(tmp_path / "p.yaml")


@pytest.mark.parametrize(("text", "seconds"), [("500ms", 0.5), ("30s", 30), ("15m", 900), ("2h", 7200), ("1d", 86400)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_bad_duration() -> None:
    with pytest.raises(ValueError, match="bad duration"):
        parse_duration("soon")


# --- profiles -----------------------------------------------------------------------------------


def test_psi_and_ks_separate_same_from_shifted_distributions() -> None:
    rng = np.random.default_rng(3)
    ref = profiles.numeric_profile(rng.normal(0, 1, 5000))
    same = rng.normal(0, 1, 600)
    shifted = rng.normal(0.8, 1, 600)
    assert profiles.psi(ref, same) < 0.1 < 0.25 < profiles.psi(ref, shifted)
    assert profiles.ks(ref, same)[1] > 1e-3
    assert profiles.ks(ref, shifted)[1] < 1e-6


def test_categorical_profile_keys_numeric_codes_like_incoming_values() -> None:
    ref = profiles.categorical_profile([0.0, 1.0, 1.0, 2.0])
    assert ref["categories"] == ["0", "1", "2"]
    assert profiles.psi(ref, [0, 1, 1, 2]) < 1e-6
    assert profiles.psi(ref, [5, 5, 5, 5]) > 1  # never-seen categories count as drift


def test_build_profiles_uses_the_categorical_list() -> None:
    m = np.array([[1.0, 0.5], [2.0, 0.7], [1.0, 0.9]])
    out = profiles.build_profiles(m, ["code", "x"], categorical=["code"])
    assert out["code"]["kind"] == "categorical"
    assert out["x"]["kind"] == "numeric"


# --- safe model files ---------------------------------------------------------------------------


def test_a_scikit_learn_model_round_trips_under_the_trusted_types_policy() -> None:
    from sklearn.linear_model import LogisticRegression

    x = np.random.default_rng(0).normal(size=(50, 3))
    y = np.where(x[:, 0] > 0, "approve", "deny")
    model = LogisticRegression().fit(x, y)
    loaded = models.load_model(models.dump_model(model))
    assert (loaded.predict(x) == model.predict(x)).all()
    scores = models.positive_scores(loaded, x, "approve")
    assert scores.shape == (50,)


def test_a_model_file_with_an_untrusted_type_is_refused_before_loading() -> None:
    from collections import OrderedDict

    data = sio.dumps({"payload": OrderedDict(a=1), "call": print})
    with pytest.raises(models.UnsafeArtifactError, match="untrusted types"):
        models.load_model(data)


def test_to_matrix_names_the_bad_feature() -> None:
    assert np.isnan(models.to_matrix([{"a": None, "b": 1}], ["a", "b"])[0, 0])
    with pytest.raises(ValueError, match="feature 'b'"):
        models.to_matrix([{"a": 1.0, "b": "x"}], ["a", "b"])
    # Fuzzing found it: an integer beyond float64 (JSON allows it) was an OverflowError, a 500 in predict.
    with pytest.raises(ValueError, match="row 0: feature 'a' is too large for a float64"):
        models.to_matrix([{"a": 10**400, "b": 1}], ["a", "b"])
    assert models.to_matrix([{"a": 10**300, "b": -(10**300)}], ["a", "b"]).tolist() == [[1e300, -1e300]]


def test_build_estimator_applies_params_and_seed() -> None:
    spec = load_project().model
    est = models.build_estimator(spec, seed=11)
    assert est.get_params()["max_iter"] == spec.params["max_iter"]
    assert est.get_params()["random_state"] == spec.params["random_state"]


# --- settings and auth --------------------------------------------------------------------------


def test_local_secrets_are_refused_outside_local_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIFTLINE_STACK_ENV", "/nonexistent")
    with pytest.raises(ValidationError, match="local-mode default secret"):
        StackSettings(local_mode=False)
    ok = StackSettings(
        local_mode=False, postgres_dsn="postgresql://u:strong@db/x", minio_secret_key="another-strong-secret"
    )
    assert not ok.local_mode


def _auth_app(tokens: list[str]) -> TestClient:
    app = FastAPI()
    auth = TokenAuth(tokens)
    from fastapi import Depends

    @app.post("/w")
    async def write(actor: str = Depends(auth)) -> dict[str, str]:
        return {"actor": actor}

    return TestClient(app)


def test_write_endpoints_need_a_known_bearer_token() -> None:
    client = _auth_app(["alice=s3cret", "bare-token"])
    assert client.post("/w").status_code == 401
    assert client.post("/w", headers={"Authorization": "Basic abc"}).status_code == 401
    assert client.post("/w", headers={"Authorization": "Bearer wrong"}).status_code == 403
    assert client.post("/w", headers={"Authorization": "Bearer s3cret"}).json() == {"actor": "alice"}
    assert client.post("/w", headers={"Authorization": "Bearer bare-token"}).json() == {"actor": "api"}


def test_no_tokens_outside_local_mode_refuses_to_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DRIFTLINE_API_TOKENS", raising=False)
    stack = StackSettings(
        local_mode=False, postgres_dsn="postgresql://u:strong@db/x", minio_secret_key="another-strong-secret"
    )
    with pytest.raises(RuntimeError, match="DRIFTLINE_API_TOKENS"):
        TokenAuth.from_settings(stack, "t")


def test_api_tokens_come_through_the_settings_layer_like_every_other_setting(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("DRIFTLINE_API_TOKENS", raising=False)
    stack_env = tmp_path / "stack.env"
    stack_env.write_text("DRIFTLINE_API_TOKENS=alice=from-stack-env,ci=second\n")
    monkeypatch.setenv("DRIFTLINE_STACK_ENV", str(stack_env))
    stack = StackSettings()
    assert "from-stack-env" not in repr(stack)  # a secret: never printed
    auth = TokenAuth.from_settings(stack, "t")
    admin = frozenset({"admin"})
    assert auth._tokens == [("alice", admin, b"from-stack-env"), ("ci", admin, b"second")]
    monkeypatch.setenv("DRIFTLINE_API_TOKENS", "bob=from-env")  # the environment wins, as for every setting
    assert TokenAuth.from_settings(StackSettings(), "t")._tokens == [("bob", admin, b"from-env")]
    explicit = StackSettings(api_tokens="carol=given")
    assert TokenAuth.from_settings(explicit, "t")._tokens == [("carol", admin, b"given")]


def _scoped_app(local_mode: bool) -> TestClient:
    """A service's app as ``driftline.service.build_app`` makes it (the lifespan is not run)."""
    from fastapi import APIRouter, Depends

    from driftline.service import Service, build_app
    from driftline.settings import ServiceSettings

    tokens = "reader:read=tr,client:predict=tp,ops:write=tw,root=ta"
    auth = TokenAuth(tokens.split(","))
    router = APIRouter()

    @router.get("/v1/things")
    async def things() -> dict[str, str]:
        return {"ok": "read"}

    @router.post("/v1/predict")
    async def predict() -> dict[str, str]:
        return {"ok": "predict"}

    @router.post("/v1/write")
    async def write(actor: str = Depends(auth)) -> dict[str, str]:
        return {"actor": actor}

    async def wire(rt: Any, settings: Any) -> Any:  # never called: the lifespan does not run
        raise AssertionError

    service: Service[Any, Any] = Service(
        name="t", title="t", description="", wire=wire, routers=[router], scopes={"/v1/predict": "predict"}
    )
    stack = StackSettings(
        local_mode=local_mode,
        postgres_dsn="postgresql://u:strong@db/x",
        minio_secret_key="another-strong-secret",
        api_tokens=tokens,
    )
    return TestClient(build_app(service, ServiceSettings(stack=stack)))


def test_outside_local_mode_reads_and_predict_need_a_token_with_their_scope(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIFTLINE_STACK_ENV", "/nonexistent")
    client = _scoped_app(local_mode=False)

    def status(method: str, path: str, token: str | None = None) -> int:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return client.request(method, path, headers=headers).status_code

    assert status("GET", "/v1/things") == 401
    assert status("GET", "/v1/things", "tr") == 200
    assert status("GET", "/v1/things", "tp") == 403
    assert client.get("/v1/things", headers={"Authorization": "Bearer tp"}).json()["detail"]["reason"] == (
        "the token of 'client' lacks the 'read' scope"
    )
    assert status("POST", "/v1/predict") == 401
    assert status("POST", "/v1/predict", "tp") == 200
    assert status("POST", "/v1/predict", "tr") == 403
    assert status("POST", "/v1/write", "tw") == 200
    assert status("POST", "/v1/write", "tp") == 403  # write endpoints check their own scope
    for method, path in (("GET", "/v1/things"), ("POST", "/v1/predict"), ("POST", "/v1/write")):
        assert status(method, path, "ta") == 200  # an entry without scopes is an admin token
    assert status("GET", "/healthz") == 200 and status("GET", "/metrics") == 200  # probes stay open
    assert status("GET", "/openapi.json") == 200


def test_in_local_mode_reads_and_predict_stay_open(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIFTLINE_STACK_ENV", "/nonexistent")
    client = _scoped_app(local_mode=True)
    assert client.get("/v1/things").status_code == 200
    assert client.post("/v1/predict").status_code == 200
    assert client.post("/v1/write").status_code == 401  # writes always need a token


def test_an_unknown_scope_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown scope"):
        TokenAuth(["eve:everything=tok"])


# --- retries ------------------------------------------------------------------------------------


def test_outages_are_transient_and_bugs_are_not() -> None:
    assert is_transient(TransientError("db down"))
    assert is_transient(ConnectionRefusedError())
    assert not is_transient(ValueError("bad value"))
    assert not is_transient(PoisonRecord("bad"))


def test_backoff_grows_and_is_capped() -> None:
    b = Backoff(initial=0.1, maximum=1.0)
    delays = [b.next_delay() for _ in range(10)]
    assert delays[0] <= 0.1
    assert max(delays) <= 1.0
    assert delays[5] > delays[0]


async def test_retry_transient_retries_outages_until_success() -> None:
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise TransientError("down")
        return "ok"

    assert await retry_transient(flaky, what="t", backoff=Backoff(initial=0.001)) == "ok"
    assert calls == 3


async def test_retry_transient_raises_a_bug_at_once() -> None:
    async def broken() -> None:
        raise ValueError("bug")

    with pytest.raises(ValueError, match="bug"):
        await asyncio.wait_for(retry_transient(broken, what="t"), 1)


# --- API factory ----------------------------------------------------------------------------------


async def test_http_metrics_are_labelled_by_route_template_and_status() -> None:
    import httpx

    from driftline.api import create_app

    app = create_app("metrics-test", title="t")

    @app.get("/v1/things/{thing_id}")
    async def thing(thing_id: int) -> dict[str, int]:
        return {"id": thing_id}

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        assert (await client.get("/v1/things/7")).json() == {"id": 7}
        assert (await client.get("/v1/things/not-a-number")).status_code == 422
        assert (await client.get("/no/such/route")).status_code == 404
        text = (await client.get("/metrics")).text
    lines = [line for line in text.splitlines() if line.startswith("driftline_http_requests_total{")]
    assert any('route="/v1/things/{thing_id}"' in x and 'status="200"' in x and "metrics-test" in x for x in lines)
    assert any('route="/v1/things/{thing_id}"' in x and 'status="422"' in x for x in lines)
    assert any('route="unmatched"' in x and 'status="404"' in x for x in lines)


# --- migrations -----------------------------------------------------------------------------------


def test_migrations_are_ordered_by_their_number_not_by_their_name(tmp_path: Path) -> None:
    from driftline.db import migration_files

    for name in ("10_later.sql", "2_second.sql", "001_first.sql", "9_ninth.sql"):
        (tmp_path / name).write_text("SELECT 1;")
    assert [version for version, _ in migration_files(tmp_path)] == ["001_first", "2_second", "9_ninth", "10_later"]


@pytest.mark.parametrize("names", [("001_a.sql", "1_b.sql"), ("002_x.sql", "002_y.sql")])
def test_two_migrations_with_the_same_number_are_refused(tmp_path: Path, names: tuple[str, str]) -> None:
    from driftline.db import migration_files

    for name in names:
        (tmp_path / name).write_text("SELECT 1;")
    with pytest.raises(ValueError, match="same number"):
        migration_files(tmp_path)


def test_the_services_migrations_are_numbered_once_each() -> None:
    from driftline.db import migration_files
    from driftline.settings import repo_root

    root = repo_root()
    assert root is not None
    for directory in root.glob("services/*/src/*/migrations"):
        versions = [int(v.split("_", 1)[0]) for v, _ in migration_files(directory)]
        assert versions == sorted(versions), directory
