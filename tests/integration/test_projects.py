"""Projects applied at run time: `driftline projects …` against the real Kafka and registry, and a
running ingestion service that follows the projects topic without a restart."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from driftline.catalog import PROJECTS
from driftline.history import read_topics
from driftline.project_topic import ProjectLockError, apply_definition, project_lock, read_book
from driftline.projects import Definition
from driftline.settings import LOCAL_API_TOKEN, StackSettings
from tests.integration.test_cli_publish import run_cli
from tests.support import ROOT, Namespace, ServiceProcess, create_namespace, drop_namespace

MACHINE = ROOT / "examples" / "machine_health"
READING = {"machine_id": "m-1", "temperature": 61.5, "vibration": 2.2, "pressure": 140.0, "rpm": 1450.0, "line": 2}


@pytest.fixture(scope="module")
async def ingestion(base_stack: StackSettings) -> AsyncIterator[tuple[Namespace, ServiceProcess]]:
    ns = await create_namespace(base_stack, "proj")
    proc = ServiceProcess("driftline_ingestion", ns, env={"DRIFTLINE_API_TOKENS": ""}).start("DRIFTLINE_INGESTION_")
    try:
        await proc.wait_ready()
        yield ns, proc
    finally:
        proc.stop()
        await drop_namespace(ns, base_stack)


def machine_copy(tmp_path: Path, edit: Any = None) -> Path:
    """The machine-health project (and its payload schema) in a folder of the test's own."""
    shutil.copy(MACHINE / "MachineReading.avsc", tmp_path / "MachineReading.avsc")
    doc = yaml.safe_load((MACHINE / "project.yaml").read_text())
    if edit is not None:
        edit(doc)
    path = tmp_path / "project.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


async def post_reading(proc: ServiceProcess) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.post(
            f"{proc.url}/v1/events",
            json={"type": "machine_reading", "event_id": str(uuid.uuid4()), "payload": READING},
            headers={"Authorization": f"Bearer {LOCAL_API_TOKEN}"},
            timeout=10,
        )


async def eventually_status(proc: ServiceProcess, status: int, timeout_s: float = 15) -> httpx.Response:
    import asyncio

    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        resp = await post_reading(proc)
        if resp.status_code == status or asyncio.get_running_loop().time() > deadline:
            return resp
        await asyncio.sleep(0.2)


async def test_a_project_applied_at_run_time_is_served_changed_refused_and_deleted(
    ingestion: tuple[Namespace, ServiceProcess], tmp_path: Path
) -> None:
    ns, proc = ingestion
    # The service applied its configured project (the checkout's loan example) at start.
    listed = await run_cli(ns, "projects", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert '"project": "loan-approval"' in listed.stdout and '"applied_by": "service:ingestion"' in listed.stdout

    # A second project's events are refused until it is applied.
    before = await post_reading(proc)
    assert before.status_code == 422 and "machine_reading" in before.text, before.text
    path = machine_copy(tmp_path)
    diff = await run_cli(ns, "projects", "diff", str(path))
    assert diff.returncode == 0 and "new, would apply as version 1" in diff.stdout, diff.stdout + diff.stderr
    applied = await run_cli(ns, "projects", "apply", str(path))
    assert applied.returncode == 0 and "applied as version 1" in applied.stdout, applied.stdout + applied.stderr
    accepted = await eventually_status(proc, 200)
    assert accepted.status_code == 200 and accepted.json()["accepted"] == 1, accepted.text
    again = await run_cli(ns, "projects", "apply", str(path))
    assert "unchanged (version 1)" in again.stdout, again.stdout

    # A compatible change (a new window) rolls forward with a new feature-set version.
    window = {"name": "rpm_mean_30m", "field": "rpm", "agg": "mean", "window": {"type": "tumbling", "size": "30m"}}
    wider = machine_copy(tmp_path, lambda doc: doc["features"]["windows"].append(window))
    changed = await run_cli(ns, "projects", "apply", str(wider))
    assert changed.returncode == 0, changed.stdout + changed.stderr
    assert "applied version 2 (feature set 1+2)" in changed.stdout and "rpm_mean_30m" in changed.stdout

    # A change that breaks the running project is refused, and nothing is published.
    def without_vibration(doc: dict[str, Any]) -> None:
        doc["features"]["raw"].remove("vibration")
        doc["features"]["windows"] = [w for w in doc["features"]["windows"] if w["field"] != "vibration"]

    breaking = machine_copy(tmp_path, without_vibration)
    refused = await run_cli(ns, "projects", "apply", str(breaking))
    assert refused.returncode == 1 and "refused" in refused.stderr, refused.stdout + refused.stderr
    assert "'vibration'" in refused.stderr and "used by the current model" in refused.stderr
    book = await read_book(ns.stack)
    assert book.get("machine-health").version == 2  # type: ignore[union-attr]
    shown = await run_cli(ns, "projects", "show", "machine-health")
    assert "version: 2" in shown.stdout and "rpm_mean_30m" in shown.stdout, shown.stdout

    # Another project may not take an event type that is already served.
    clash = machine_copy(tmp_path, lambda doc: doc.update(name="machine-health-2"))
    clashed = await run_cli(ns, "projects", "apply", str(clash))
    assert clashed.returncode == 1 and "belongs to project 'machine-health'" in clashed.stderr

    # Delete: a deletion record and a tombstone; the service stops accepting the event type.
    deleted = await run_cli(ns, "projects", "delete", "machine-health", "--yes")
    assert deleted.returncode == 0, deleted.stdout + deleted.stderr
    gone = await eventually_status(proc, 422)
    assert gone.status_code == 422, gone.text
    assert (await read_book(ns.stack)).get("machine-health") is None
    records = [e for e in await read_topics(ns.stack, [PROJECTS]) if e.value["project"] == "machine-health"]
    assert [(e.value["version"], e.value["deleted"]) for e in records] == [(1, False), (2, False), (3, True)]
    missing = await run_cli(ns, "projects", "show", "machine-health")
    assert missing.returncode == 1 and "no project 'machine-health'" in missing.stderr


async def test_a_service_start_does_not_overwrite_a_version_applied_by_hand(
    ingestion: tuple[Namespace, ServiceProcess], tmp_path: Path
) -> None:
    ns, _ = ingestion
    # The loan project with other policies, applied by hand (version 2).
    doc = yaml.safe_load((ROOT / "examples" / "loan_approval" / "project.yaml").read_text())
    doc["drift"]["window"] = 800
    path = tmp_path / "project.yaml"
    path.write_text(yaml.safe_dump(doc))
    applied = await run_cli(ns, "projects", "apply", str(path))
    assert applied.returncode == 0 and "drift.window: 600 -> 800" in applied.stdout, applied.stdout + applied.stderr
    # A second ingestion starts with the shipped file: it serves the topic's version.
    second = ServiceProcess("driftline_ingestion", ns, env={"DRIFTLINE_API_TOKENS": ""}).start("DRIFTLINE_INGESTION_")
    try:
        await second.wait_ready()
    finally:
        second.stop()
    current = (await read_book(ns.stack)).get("loan-approval")
    assert current is not None and current.version == 2 and current.project.drift.window == 800
    assert "project_file_not_applied" in Path(second.log_path).read_text()  # noqa: ASYNC240 - a small log file


async def test_two_applies_of_one_project_at_once_become_two_versions_the_second_planned_on_the_first(
    base_stack: StackSettings, tmp_path: Path
) -> None:
    ns = await create_namespace(base_stack, "plock")
    try:
        (tmp_path / "base").mkdir()
        base = machine_copy(tmp_path / "base")
        assert (await apply_definition(ns.stack, Definition.from_file(base), applied_by="t")).version == 1

        def window(minutes: int) -> Path:
            folder = tmp_path / f"w{minutes}"
            folder.mkdir()
            return machine_copy(folder, lambda doc: doc["drift"].__setitem__("window", minutes))

        plans = await asyncio.gather(
            apply_definition(ns.stack, Definition.from_file(window(700)), applied_by="a"),
            apply_definition(ns.stack, Definition.from_file(window(900)), applied_by="b"),
        )
        assert sorted(p.version for p in plans) == [2, 3]
        second = max(plans, key=lambda p: p.version)
        # The second was planned against the first's version, not the one both started from.
        assert any(
            line.startswith("drift.window: 700 -> 900") or line.startswith("drift.window: 900 -> 700")
            for line in second.changes
        ), second.changes
        records = [e.record for e in await read_topics(ns.stack, [PROJECTS])]
        assert [r.version for r in records] == [1, 2, 3]
        # While one holds the lock, another apply waits; past its wait it is told why.
        async with project_lock(ns.stack, "machine-health"):
            with pytest.raises(ProjectLockError, match="held its lock"):
                async with project_lock(ns.stack, "machine-health", timeout_s=0.5):
                    pass
    finally:
        await drop_namespace(ns, base_stack)
