"""Two projects on one install, the second applied at run time with `driftline projects apply`.

The six services start with the loan project (their configured file). The machine-health example
(another event type, payload schema, entity key, features and label) is applied while they run;
its readings stream over HTTP next to the loan applications; it gets a first model of its own. Then
the loan stream drifts: the loan model is retrained, promoted and redeployed by itself, while the
machine-health model keeps its one version, and no drift or drift-triggered run names it. `trace`
rebuilds each project's chain from the topics alone.
"""

from __future__ import annotations

import asyncio
import subprocess
from typing import Any

import httpx

from driftline.catalog import DRIFT_DETECTED, PREDICTIONS, TRAINING_REQUESTED
from driftline.history import read_topics
from driftline.settings import LOCAL_API_TOKEN
from driftline_cli.examples.loan_approval.scenario import Scenario, ScenarioConfig
from driftline_cli.examples.machine_health.stream import MachineStream
from driftline_sdk import Publisher
from tests.e2e.test_closed_loop import trace
from tests.support import ROOT, Namespace, ServiceProcess, eventually

MACHINE = "machine-health"
AUTH = {"Authorization": f"Bearer {LOCAL_API_TOKEN}"}


def cli(namespace: Namespace, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ROOT / ".venv" / "bin" / "driftline"), *args],
        env={**namespace.env(), "COLUMNS": "250"},
        capture_output=True,
        text=True,
        timeout=120,
    )


async def feed(url: str, stream: MachineStream, stop: asyncio.Event, *, rate: float = 80, delay: int = 40) -> int:
    """Readings over HTTP at ``rate`` per second, labels ``delay`` readings behind, until ``stop``."""
    sent = 0
    pending: list[Any] = []
    async with Publisher.http(url, LOCAL_API_TOKEN, source="machines", batch_size=40) as pub:
        while not stop.is_set():
            batch = list(stream.take(20))
            result = await pub.publish([r.event for r in batch])
            assert not result.rejected, result.errors[:3]
            sent += len(batch)
            pending += batch
            if len(pending) > delay:
                due, pending = pending[:-delay], pending[-delay:]
                await pub.publish_labels([r.label_record() for r in due])
            await asyncio.sleep(len(batch) / rate)
        await pub.publish_labels([r.label_record() for r in pending])
    return sent


async def test_two_projects_on_one_install_drift_in_one_retrains_only_that_one(
    namespace: Namespace,
    services: dict[str, ServiceProcess],
) -> None:
    training, registry = services["training"].url, services["registry"].url
    applied = await asyncio.to_thread(
        cli, namespace, "projects", "apply", str(ROOT / "examples/machine_health/project.yaml")
    )
    assert applied.returncode == 0 and "applied as version 1" in applied.stdout, applied.stdout + applied.stderr

    async with httpx.AsyncClient(timeout=30, headers=AUTH) as http:

        async def every_service_knows_it() -> None:
            features = await http.get(f"{services['features'].url}/v1/features/m-000", params={"project": MACHINE})
            assert features.status_code == 404 and "no feature vector" in features.text, features.text
            examples = await http.get(f"{training}/v1/examples", params={"project": MACHINE})
            assert examples.status_code == 200, examples.text

        await eventually(every_service_knows_it, timeout_s=30, interval_s=0.3)
        stop = asyncio.Event()
        machines = asyncio.create_task(feed(services["ingestion"].url, MachineStream(seed=5), stop))
        try:

            async def labelled() -> None:
                assert not machines.done(), machines.exception() if machines.done() else None
                r = await http.get(f"{training}/v1/examples", params={"project": MACHINE})
                assert r.json()["labelled"] >= 600, r.text

            await eventually(labelled, timeout_s=120, interval_s=0.5)
            first = await http.post(
                f"{training}/v1/training-requests", json={"model_name": MACHINE, "reason": "initial"}
            )
            assert first.status_code == 202, first.text
            machine_chain = first.json()["correlation_id"]

            async def machine_model_serves() -> None:
                r = await http.get(f"{registry}/v1/models", params={"project": MACHINE})
                models = r.json()["models"]
                assert [(m["name"], m["champion_version"]) for m in models] == [(MACHINE, 1)], models

            await eventually(machine_model_serves, timeout_s=180, interval_s=0.5)

            # The loan stream drifts while the machine readings keep coming.
            config = ScenarioConfig(
                seed=11,
                warmup=700,
                before_drift=700,
                after_drift_max=4000,
                after_new_model=500,
                rate=200,
                timeout_s=600,
                ingestion_url=services["ingestion"].url,
                training_url=training,
            )
            summary = await Scenario(namespace.stack, config, say=print).run()
        finally:
            stop.set()
            sent = await machines
        timeline = "\n".join(f"{t['t']}s {t['topic']} {t['what']}" for t in summary.timeline)
        assert summary.closed, f"loop did not close: {summary.reason}\n{timeline}"
        assert summary.new_version is not None and summary.first_version is not None
        assert summary.new_version > summary.first_version
        assert sent > 1000

        # The machine model: one version, its project shown in the model list.
        models = {m["name"]: m for m in (await http.get(f"{registry}/v1/models")).json()["models"]}
        assert models[MACHINE]["project"] == MACHINE and models["loan-approval"]["project"] == "loan-approval"
        assert models[MACHINE]["versions"] == 1 and models[MACHINE]["champion_version"] == 1
        runs = (await http.get(f"{training}/v1/runs", params={"project": MACHINE})).json()["runs"]
        assert [r["reason"] for r in runs] == ["initial"], runs
        # Monitoring watches both models, each with its own windows.
        drift = (await http.get(f"{services['monitoring'].url}/v1/drift", params={"project": MACHINE})).json()
        assert [m["model_name"] for m in drift["models"]] == [MACHINE], drift["models"]

    records = await read_topics(namespace.stack, [DRIFT_DETECTED, TRAINING_REQUESTED, PREDICTIONS])
    drifted = {e.value["model_name"] for e in records if e.topic == DRIFT_DETECTED}
    assert drifted == {"loan-approval"}, drifted
    machine_requests = [e.value for e in records if e.topic == TRAINING_REQUESTED and e.value["model_name"] == MACHINE]
    assert [r["reason"] for r in machine_requests] == ["initial"], machine_requests
    scored = {e.value["model_name"] for e in records if e.topic == PREDICTIONS}
    assert scored == {"loan-approval", MACHINE}

    # Each chain from the topics alone.
    assert summary.correlation_id is not None
    loan_trace = await trace(namespace, summary.correlation_id)
    assert "drift.detected" in loan_trace.stdout and f"v{summary.new_version}" in loan_trace.stdout
    assert MACHINE not in loan_trace.stdout
    machine_trace = await trace(namespace, machine_chain)
    for step in ("training.requested", "models.trained", "models.promoted", "deployments.status"):
        assert step in machine_trace.stdout, machine_trace.stdout
    assert "loan-approval" not in machine_trace.stdout and "chain incomplete" not in machine_trace.stdout
