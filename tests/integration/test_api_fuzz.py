"""API fuzzing of every service with schemathesis: generated requests, valid and invalid, for every
operation of each service's OpenAPI; no answer may be a server error.

The six services run as real processes on one namespace of the real stack, with the bearer token,
so generated requests reach the handlers. A model is trained, registered and promoted first (the
registry has a model, deployment serves it), and operations with a model name or version in the
path are fuzzed a second time with those pinned to the real ones, so requests get past the 404s.
The only server-side answer allowed is a 503 that the operation's OpenAPI documents (no model
loaded yet, a dependency not ready); any other 5xx fails the run with a curl command reproducing
it. Generation is derandomized (the same requests on every run, locally and in CI) and has no
deadline; shrinking stays on, so a failure shows a minimal request.

Each operation gets a Hypothesis test built from schemathesis's strategy for it
(``APIOperation.as_strategy``), not ``schemathesis.pytest.from_fixture``: that one sets
``Function._nodeid``, which pytest 9.2 no longer has, and the services' ports are only known once
the fixture has started them.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import httpx
import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error

from driftline.artifacts import ArtifactStore
from driftline.catalog import MODELS_TRAINED
from driftline.producer import EventProducer
from driftline.serde import AvroSerde, SchemaRegistryClient
from driftline.settings import LOCAL_API_TOKEN, StackSettings
from tests.integration.test_registry import trained_record
from tests.support import Namespace, ServiceProcess, create_namespace, drop_namespace, eventually
from tests.unit.deployment import synthetic
from tests.unit.deployment.synthetic import FEATURES, MODEL_NAME

AUTH = {"Authorization": f"Bearer {LOCAL_API_TOKEN}"}
SERVICES = ("ingestion", "features", "training", "registry", "deployment", "monitoring")
EXAMPLES = 25  # per operation, pass and generation mode (positive and negative: 50 per operation)
PINNED = {"name": MODEL_NAME, "version": 1}  # path parameters of the second pass: the seeded model
CONFIG = {"headers": AUTH, "request-timeout": 30, "phases": {"stateful": {"enabled": False}}}
SETTINGS = hypothesis.settings(
    max_examples=EXAMPLES,
    deadline=None,  # a request to a real process on a shared CI machine takes what it takes
    derandomize=True,  # the same examples on every run: CI is reproducible
    database=None,
    suppress_health_check=list(hypothesis.HealthCheck),
    verbosity=hypothesis.Verbosity.quiet,
)


async def seed_a_served_model(ns: Namespace, procs: dict[str, ServiceProcess]) -> None:
    """A trained model on models.trained: the registry registers and promotes it as version 1,
    deployment loads it, monitoring takes its reference."""
    model = synthetic.train(seed=7, n=800, max_iter=20)
    store = ArtifactStore.from_settings(ns.stack)
    refs = await synthetic.store_model(store, model)
    record = {
        **trained_record(model.accuracy),
        **refs,
        "run_id": model.run_id,
        "model_name": MODEL_NAME,
        "feature_names": FEATURES,
        "metrics": {"accuracy": model.accuracy},
    }
    registry = SchemaRegistryClient.from_settings(ns.stack)
    producer = EventProducer(ns.stack.kafka, AvroSerde(registry, topic_prefix=ns.prefix), "test-fuzz")
    await producer.start([MODELS_TRAINED])
    try:
        await producer.publish(MODELS_TRAINED, record)
    finally:
        await producer.stop()
        await registry.close()

    async with httpx.AsyncClient(timeout=10) as http:

        async def served() -> None:
            model_row = (await http.get(f"{procs['registry'].url}/v1/models/{MODEL_NAME}")).json()
            assert model_row.get("champion_version") == 1, model_row
            info = (await http.get(f"{procs['deployment'].url}/v1/deployment")).json()
            champion = info["models"].get(MODEL_NAME, {}).get("champion")
            assert champion is not None and champion["version"] == 1, info

        await eventually(served, timeout_s=120)


@pytest.fixture(scope="module")
async def services(base_stack: StackSettings) -> AsyncIterator[dict[str, ServiceProcess]]:
    """The six services, started together on one namespace, ready, with a model served."""
    ns = await create_namespace(base_stack, "fuzz")
    procs = {
        name: ServiceProcess(f"driftline_{name}", ns, env={"DRIFTLINE_API_TOKENS": ""}).start(
            f"DRIFTLINE_{name.upper()}_"
        )
        for name in SERVICES
    }
    try:
        await asyncio.gather(*(p.wait_ready(timeout_s=180) for p in procs.values()))
        await seed_a_served_model(ns, procs)
        yield procs
    finally:
        for p in procs.values():
            p.stop()
        await drop_namespace(ns, base_stack)


def allowed(operation: schemathesis.APIOperation, response: schemathesis.Response) -> bool:
    """A documented 503 is the one server-side answer allowed: not ready yet, said so in the OpenAPI."""
    return response.status_code == 503 and "503" in operation.responses.status_codes


def fuzz(
    operation: schemathesis.APIOperation,
    base_url: str,
    mode: schemathesis.GenerationMode,
    statuses: Counter[int],
    path_parameters: dict[str, Any] | None = None,
) -> None:
    """Send generated requests to one operation; raises on the first server error (shrunk)."""
    session = requests.Session()

    @SETTINGS
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode, path_parameters=path_parameters))
    def send(case: schemathesis.Case) -> None:
        response = case.call(base_url=base_url, session=session, headers=AUTH, timeout=30)
        statuses[response.status_code] += 1
        if not allowed(operation, response):
            case.validate_response(response, checks=[not_a_server_error], headers=AUTH)

    try:
        send()
    finally:
        session.close()


@pytest.mark.parametrize("service", SERVICES)
def test_no_generated_request_gets_a_server_error(service: str, services: dict[str, ServiceProcess]) -> None:
    url = services[service].url
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", config=schemathesis.Config.from_dict(CONFIG))
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {"GET /healthz", "GET /readyz", "GET /metrics"} <= {op.label for op in operations}
    assert len(operations) >= 4, f"{service} documents {len(operations)} operations"
    failures: list[str] = []
    answered: dict[str, Counter[int]] = {}
    for operation in operations:
        statuses = answered.setdefault(operation.label, Counter())
        in_path = set(re.findall(r"{(\w+)}", operation.path))
        pinned = {k: v for k, v in PINNED.items() if k in in_path}
        for path_parameters in (None, pinned) if pinned else (None,):
            for mode in schemathesis.GenerationMode:
                try:
                    fuzz(operation, url, mode, statuses, path_parameters)
                except hypothesis.errors.Unsatisfiable:
                    # Nothing invalid to send: no parameters, or every parameter pinned or free-form.
                    assert mode is schemathesis.GenerationMode.NEGATIVE, f"no valid request for {operation.label}"
                except (Exception, BaseExceptionGroup) as exc:  # schemathesis's FailureGroup
                    failures.append(f"{operation.label} ({mode.value}, pinned {path_parameters}): {exc}")
    print(
        f"\n{service}: answers by operation: " + json.dumps({k: dict(sorted(v.items())) for k, v in answered.items()})
    )
    assert not failures, f"{service}: {len(failures)} server error(s):\n\n" + "\n\n".join(failures)
    # The token is accepted: the requests reached the handlers, none stopped at 401/403.
    for label, statuses in answered.items():
        assert statuses, f"{label}: nothing sent"
        assert not {401, 403} & set(statuses), f"{label}: the token was refused: {dict(statuses)}"
    # The seeded model is there: the registry's pinned pass found its version, deployment lists it.
    if service == "registry":
        assert answered["GET /v1/models/{name}/versions/{version}"][200] > 0
    if service == "deployment":
        assert answered["GET /v1/deployment"][200] > 0


# Feature values: ordinary numbers or null, and in about half of the rows one odd value, as JSON
# can carry it (Python's json also writes NaN and ±Infinity, which the services' parser reads).
ORDINARY = st.one_of(st.none(), st.integers(-(10**9), 10**9), st.floats(-1e12, 1e12))
ODD = st.one_of(st.integers(min_value=-(10**400), max_value=10**400), st.floats(), st.booleans(), st.text(max_size=5))
ROW = st.fixed_dictionaries({name: ORDINARY for name in FEATURES}).flatmap(
    lambda row: st.one_of(
        st.just(row), st.tuples(st.sampled_from(FEATURES), ODD).map(lambda odd: {**row, odd[0]: odd[1]})
    )
)


def usable(value: Any) -> bool:
    """A value the model scores: null or a number a float64 holds (NaN is missing, like null)."""
    if value is None:
        return True
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        float(value)
    except OverflowError:
        return False
    return True


def test_predict_with_the_served_model_never_answers_a_server_error(services: dict[str, ServiceProcess]) -> None:
    """The generic pass cannot guess the model's feature names, so this one sends vectors naming
    exactly them, with any JSON number (huge integers, NaN, ±Infinity), null, or a value of the
    wrong type; an integer beyond float64 was a 500 (an OverflowError in to_matrix)."""
    url = f"{services['deployment'].url}/v1/predict"
    statuses: Counter[int] = Counter()
    with requests.Session() as session:

        @hypothesis.settings(SETTINGS, max_examples=60)
        @hypothesis.given(rows=st.lists(ROW, min_size=1, max_size=3))
        def send(rows: list[dict[str, Any]]) -> None:
            body = json.dumps({"instances": rows} if len(rows) > 1 else {"features": rows[0]})
            r = session.post(url, data=body, headers={**AUTH, "Content-Type": "application/json"}, timeout=30)
            statuses[r.status_code] += 1
            assert r.status_code < 500, (r.status_code, r.text, body[:500])
            if all(usable(v) for row in rows for v in row.values()):
                assert r.status_code == 200, (r.status_code, r.text, body[:500])
                assert len(r.json()["predictions"]) == len(rows)
            else:
                assert r.status_code == 422, (r.status_code, r.text, body[:500])
                assert r.json()["detail"]

        send()
    print(f"\npredict with the served model: {dict(sorted(statuses.items()))}")
    assert statuses[200] > 0 and statuses[422] > 0
