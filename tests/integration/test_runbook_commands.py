"""The runbooks' read-only and ``--dry-run`` DLQ commands, run as written against the real stack.

A real ingestion service refuses bad input over HTTP (it dead-letters each refusal with the error
type the validation gave it) and a consumer-style refusal is dead-lettered as the consumer runner
writes it; then every ``driftline dlq list …`` and ``driftline dlq replay … --dry-run`` of the
runbooks runs in a subprocess, exactly as an operator would type it, and must match records.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from driftline.catalog import EVENTS_RAW
from driftline.producer import EventProducer
from driftline.serde import AvroSerde, SchemaRegistryClient
from driftline.settings import LOCAL_API_TOKEN, StackSettings
from tests.support import ROOT, Namespace, ServiceProcess, TopicReader, create_namespace, drop_namespace
from tests.support import dead_letter_as_a_consumer as support_dead_letter
from tests.unit.ingestion.fakes import LOAN
from tests.unit.test_runbooks import runbook_commands, simple_commands

TOKEN = {"Authorization": f"Bearer {LOCAL_API_TOKEN}"}


def dlq_commands() -> list[list[str]]:
    """The runbooks' `driftline dlq list …` and `driftline dlq replay … --dry-run` (nothing published)."""
    out: list[list[str]] = []
    for command in runbook_commands():
        for simple in simple_commands(command.text):
            words = simple.words
            dlq = words[:1] in (["driftline"], [".venv/bin/driftline"]) and words[1:2] == ["dlq"]
            safe = words[2:3] == ["list"] or (words[2:3] == ["replay"] and "--dry-run" in words)
            if dlq and safe and words[1:] not in out:
                out.append(words[1:])
    return out


@pytest.fixture(scope="module")
async def refused(base_stack: StackSettings) -> AsyncIterator[Namespace]:
    """A namespace whose events.dlq holds what ingestion refused over HTTP and what a consumer refused."""
    ns = await create_namespace(base_stack, "runbook")
    proc = ServiceProcess("driftline_ingestion", ns, env={"DRIFTLINE_API_TOKENS": ""}).start("DRIFTLINE_INGESTION_")
    try:
        await proc.wait_ready()
        async with httpx.AsyncClient(base_url=proc.url, headers=TOKEN) as client:
            bodies = [
                b"{not json",
                {"type": "loan_application", "payload": {**LOAN, "salary": "lots"}},
                {"type": "loan_application", "payload": {**LOAN, "colour": "red"}},
            ]
            for body in bodies:
                r = await (
                    client.post("/v1/events", content=body)
                    if isinstance(body, bytes)
                    else client.post("/v1/events", json={**body, "event_id": str(uuid.uuid4())})
                )
                assert 400 <= r.status_code < 500 and r.json()["dead_lettered"] == 1, r.text
        await dead_letter_as_a_consumer(ns)
        yield ns
    finally:
        proc.stop()
        await drop_namespace(ns, base_stack)


async def dead_letter_as_a_consumer(ns: Namespace) -> None:
    registry = SchemaRegistryClient.from_settings(ns.stack)
    serde = AvroSerde(registry, topic_prefix=ns.prefix)
    producer = EventProducer(ns.stack.kafka, serde, "features")
    await producer.start([EVENTS_RAW])
    try:
        await support_dead_letter(
            producer, serde, ns, {**LOAN, "customer_id": "rb-consumer"}, entity_id="rb-consumer", partition=0, offset=7
        )
    finally:
        await producer.stop()
        await registry.close()


def cli(ns: Namespace, args: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**ns.env(), "COLUMNS": "250"}
    env.pop("DRIFTLINE_API_TOKEN", None)
    return subprocess.run(
        [sys.executable, "-m", "driftline_cli.main", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_runbooks_have_dlq_commands_to_run() -> None:
    commands = dlq_commands()
    assert any(c[1] == "list" for c in commands) and any(c[1] == "replay" for c in commands), commands


async def test_every_dlq_command_of_the_runbooks_matches_what_the_services_dead_letter(refused: Namespace) -> None:
    reader = await TopicReader(refused, [EVENTS_RAW]).start()
    try:
        for args in dlq_commands():
            done = await asyncio.to_thread(cli, refused, args)
            out = done.stdout + done.stderr
            assert done.returncode == 0, f"driftline {' '.join(args)}:\n{out}"
            if args[1] == "list":
                m = re.search(r"events\.dlq: (\d+) of (\d+) matching", done.stdout)
                assert m is not None and int(m.group(2)) > 0, f"driftline {' '.join(args)} matches nothing:\n{out}"
            else:
                assert "dry run: nothing published" in done.stdout, out
                m = re.search(r"replayed=(\d+) resent=(\d+) still_invalid=(\d+)", done.stdout)
                matched = sum(map(int, m.groups())) if m is not None else 0
                assert matched > 0, f"driftline {' '.join(args)} matches nothing:\n{out}"
        # the HTTP refusals by family, by list, and the consumer's by source
        by_family = ["dlq", "list", "--source", "http", "--error-type", "validation"]
        family = await asyncio.to_thread(cli, refused, by_family)
        assert "3 of 3 matching" in family.stdout, family.stdout
        assert "malformed_json=1" in family.stdout and "wrong_type=1" in family.stdout, family.stdout
        assert "unknown_field=1" in family.stdout, family.stdout
        two = await asyncio.to_thread(cli, refused, ["dlq", "list", "--error-type", "unknown_field,wrong_type"])
        assert "2 of 2 matching" in two.stdout, two.stdout
        none = await asyncio.to_thread(cli, refused, ["dlq", "list", "--error-type", "validation_error"])
        assert "0 of 0 matching" in none.stdout and "no record matches" in none.stdout, none.stdout
        assert "handler_error=1" in none.stdout, none.stdout  # the hint names what is there
        assert reader.events == [] and await reader.poll(timeout_s=1.0) == []  # dry runs published nothing
    finally:
        await reader.stop()
