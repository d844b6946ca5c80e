"""`driftline publish` and `driftline dlq` against the real stack and a real ingestion service."""

from __future__ import annotations

import asyncio
import csv
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from driftline.catalog import EVENTS_DLQ, EVENTS_RAW, LABELS
from driftline.events import Event
from driftline.producer import EventProducer
from driftline.project import EXAMPLE_PROJECT
from driftline.serde import AvroSerde, SchemaRegistryClient
from driftline.settings import StackSettings
from tests.support import (
    ROOT,
    Namespace,
    ServiceProcess,
    TopicReader,
    create_namespace,
    dead_letter_as_a_consumer,
    drop_namespace,
    free_port,
)

LOAN = {
    "customer_id": "c-1",
    "salary": 48000.0,
    "commission": 12000.0,
    "age": 29,
    "elevel": 3,
    "car": 11,
    "zipcode": 5,
    "hvalue": 90000.0,
    "hyears": 3,
    "loan": 25000.0,
}


@pytest.fixture(scope="module")
async def service(base_stack: StackSettings) -> AsyncIterator[tuple[Namespace, ServiceProcess]]:
    ns = await create_namespace(base_stack, "cli")
    env = {"DRIFTLINE_API_TOKENS": ""}  # the local-mode default token, as on a developer machine
    proc = ServiceProcess("driftline_ingestion", ns, env=env).start("DRIFTLINE_INGESTION_")
    try:
        await proc.wait_ready()
        yield ns, proc
    finally:
        proc.stop()
        await drop_namespace(ns, base_stack)


def cli(ns: Namespace, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {**ns.env(), "COLUMNS": "200", **(env or {})}
    environment.pop("DRIFTLINE_API_TOKEN", None)
    return subprocess.run(
        [sys.executable, "-m", "driftline_cli.main", *args],
        env=environment,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


async def run_cli(ns: Namespace, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(cli, ns, *args, env=env)


async def read_to_end(reader: TopicReader) -> list[Event]:
    tps = list(reader.consumer.assignment())
    ends = await reader.consumer.end_offsets(tps)
    while True:
        positions = {tp: await reader.consumer.position(tp) for tp in tps}
        if all(positions[tp] >= ends[tp] for tp in tps):
            return reader.events
        await reader.poll()


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_bytes(b"".join((r if isinstance(r, bytes) else orjson.dumps(r)) + b"\n" for r in rows))
    return path


def sample_rows(n: int) -> list[Any]:
    rows: list[Any] = []
    for i in range(n):
        payload = {**LOAN, "customer_id": f"cust-{i}", "loan": 1000.0 + i}
        # half whole events (with their own id), half bare payloads
        rows.append(
            {"type": "loan_application", "event_id": str(uuid.uuid4()), "payload": payload} if i % 2 else payload
        )
    return rows


async def test_publish_a_jsonl_file_reports_rejects_and_exits_non_zero(
    service: tuple[Namespace, ServiceProcess], tmp_path: Path
) -> None:
    ns, proc = service
    rows = sample_rows(30)
    rows.insert(10, {**LOAN, "age": "thirty"})  # line 11: wrong type
    rows.insert(20, b'{"customer_id": "c-9", "salary": ')  # line 21: not JSON
    path = write_jsonl(tmp_path / "loans.jsonl", rows)
    reader = await TopicReader(ns, [EVENTS_RAW, EVENTS_DLQ]).start()
    try:
        done = await run_cli(ns, "publish", str(path), "--url", proc.url, "--batch-size", "8", "--no-progress")
        assert done.returncode == 1, done.stdout + done.stderr
        assert "accepted=30 duplicates=0 rejected=2 dead_lettered=2" in done.stdout
        assert "payload.age" in done.stdout and "malformed_json" in done.stdout
        lines = {
            line.split("│")[1].strip()
            for line in done.stdout.splitlines()
            if "wrong_type" in line or "malformed" in line
        }
        assert lines == {"11", "21"}
        await read_to_end(reader)
        raw = reader.on(EVENTS_RAW)
        assert len(raw) == 30 and {e.value["source"] for e in raw} == {"cli"}
        whole = {r["event_id"] for r in rows if isinstance(r, dict) and "event_id" in r}
        assert whole <= {e.event_id for e in raw}
        dead = {e.value["error_type"]: e.value for e in reader.on(EVENTS_DLQ)}
        assert set(dead) == {"wrong_type", "malformed_json"}
        assert dead["malformed_json"]["original"] == b'{"customer_id": "c-9", "salary": '
        assert dead["wrong_type"]["source"] == "http:/v1/events"

        # Publishing the same file again is a retry: nothing new downstream.
        reader.events.clear()
        again = await run_cli(ns, "publish", str(path), "--url", proc.url, "--no-progress")
        assert "accepted=0 duplicates=30 rejected=2" in again.stdout, again.stdout + again.stderr
        await read_to_end(reader)
        assert reader.on(EVENTS_RAW) == []
    finally:
        await reader.stop()


async def test_publish_a_csv_file_with_types_from_the_schema(
    service: tuple[Namespace, ServiceProcess], tmp_path: Path
) -> None:
    ns, proc = service
    path = tmp_path / "loans.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["event_time", *LOAN])
        writer.writeheader()
        for i in range(12):
            writer.writerow(
                {"event_time": f"2025-06-01T10:{i:02d}:00Z", **LOAN, "customer_id": f"csv-{i}", "age": 30 + i}
            )
    reader = await TopicReader(ns, [EVENTS_RAW]).start()
    try:
        done = await run_cli(ns, "publish", str(path), "--url", proc.url, "--no-progress")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "accepted=12 duplicates=0 rejected=0" in done.stdout
        events = await read_to_end(reader)
        assert len(events) == 12
        first = min(events, key=lambda e: e.value["event_time"]).value
        assert first["payload"]["age"] == 30 and first["payload"]["salary"] == 48000.0
        assert first["entity_id"] == "csv-0" and first["event_time"].minute == 0
    finally:
        await reader.stop()


async def test_publish_labels_and_straight_to_kafka(service: tuple[Namespace, ServiceProcess], tmp_path: Path) -> None:
    ns, proc = service
    events = [
        {"type": "loan_application", "event_id": str(uuid.uuid4()), "payload": {**LOAN, "customer_id": f"k{i}"}}
        for i in range(5)
    ]
    events_file = write_jsonl(tmp_path / "events.jsonl", [*events, {"type": "loan_application", "payload": {"x": 1}}])
    labels_file = write_jsonl(
        tmp_path / "labels.jsonl",
        [{"event_id": e["event_id"], "entity_id": e["payload"]["customer_id"], "label": "approve"} for e in events],
    )
    reader = await TopicReader(ns, [EVENTS_RAW, LABELS, EVENTS_DLQ]).start()
    try:
        direct = await run_cli(ns, "publish", str(events_file), "--kafka", "--no-progress")
        assert direct.returncode == 1, direct.stdout + direct.stderr
        assert "accepted=5 duplicates=0 rejected=1 dead_lettered=1" in direct.stdout
        labelled = await run_cli(ns, "publish", str(labels_file), "--labels", "--url", proc.url, "--no-progress")
        assert labelled.returncode == 0 and "accepted=5" in labelled.stdout, labelled.stdout + labelled.stderr
        await read_to_end(reader)
        assert {e.value["source"] for e in reader.on(EVENTS_RAW)} == {"cli-kafka"}
        assert {e.event_id for e in reader.on(EVENTS_RAW)} == {e["event_id"] for e in events}
        assert {e.value["labelled_event_id"] for e in reader.on(LABELS)} == {e["event_id"] for e in events}
        (dead,) = reader.on(EVENTS_DLQ)
        assert dead.value["source"] == "cli-kafka:events" and dead.value["error_type"] == "unknown_field"
    finally:
        await reader.stop()


async def test_when_publishing_stops_mid_file_the_summary_says_what_was_stored(
    service: tuple[Namespace, ServiceProcess], tmp_path: Path
) -> None:
    ns, proc = service
    rows: list[Any] = [{**LOAN, "customer_id": f"part-{i}"} for i in range(60)]
    for i in range(20, 40):  # the second request of 20 rows is over the service's body limit: 413
        rows[i] = {**LOAN, "customer_id": f"big-{i}-" + "x" * 60_000}
    path = write_jsonl(tmp_path / "partial.jsonl", rows)
    reader = await TopicReader(ns, [EVENTS_RAW]).start()
    try:
        done = await run_cli(ns, "publish", str(path), "--url", proc.url, "--batch-size", "20", "--no-progress")
        assert done.returncode == 2, done.stdout + done.stderr
        assert "refused the request" in done.stderr
        assert "accepted=40 duplicates=0 rejected=0" in done.stdout, done.stdout
        assert "publishing stopped" in done.stdout
        await read_to_end(reader)
        assert len(reader.on(EVENTS_RAW)) == 40
    finally:
        await reader.stop()


async def test_publish_to_a_service_that_is_not_there_exits_2(
    service: tuple[Namespace, ServiceProcess], tmp_path: Path
) -> None:
    ns, _ = service
    path = write_jsonl(tmp_path / "one.jsonl", [LOAN])
    done = await run_cli(ns, "publish", str(path), "--url", f"http://127.0.0.1:{free_port()}", "--no-progress")
    assert done.returncode == 2
    assert "unreachable" in done.stderr


# --- dlq list / replay --------------------------------------------------------------------------------------


async def test_dlq_list_and_replay_of_refused_http_input_after_the_project_learned_the_type(
    service: tuple[Namespace, ServiceProcess], tmp_path: Path
) -> None:
    ns, proc = service
    import httpx

    event = {"type": "loan_app", "event_id": str(uuid.uuid4()), "payload": {**LOAN, "customer_id": "late"}}
    async with httpx.AsyncClient(base_url=proc.url) as client:
        r = await client.post("/v1/events", json=event, headers={"Authorization": "Bearer driftline-local-token"})
    assert r.status_code == 422 and r.json()["error"] == "unknown_event_type"

    listed = await run_cli(ns, "dlq", "list", "--error-type", "unknown_event_type", "--source", "http")
    assert listed.returncode == 0, listed.stderr
    assert "http:/v1/events" in listed.stdout and "loan_app" in listed.stdout
    assert "by error: unknown_event_type=1" in listed.stdout

    # With today's project the record still fails: nothing is published.
    still = await run_cli(ns, "dlq", "replay", "--error-type", "unknown_event_type")
    assert "replayed=0" in still.stdout and "still_invalid=1" in still.stdout, still.stdout + still.stderr

    # The project now knows the type: a dry run says what would happen, the replay publishes it.
    doc = yaml.safe_load(EXAMPLE_PROJECT.read_text())
    doc["event"]["type"] = "loan_app"
    project = tmp_path / "project.yaml"
    project.write_text(yaml.safe_dump(doc))
    env = {"DRIFTLINE_PROJECT_FILE": str(project)}
    reader = await TopicReader(ns, [EVENTS_RAW]).start()
    try:
        dry = await run_cli(ns, "dlq", "replay", "--error-type", "unknown_event_type", "--dry-run", env=env)
        assert "replayed=1" in dry.stdout and "would_publish=1" in dry.stdout, dry.stdout + dry.stderr
        assert await read_to_end(reader) == []
        for _ in range(2):  # replaying twice publishes the same event id twice: sinks keep one
            done = await run_cli(ns, "dlq", "replay", "--error-type", "unknown_event_type", env=env)
            assert done.returncode == 0 and "published=1" in done.stdout, done.stdout + done.stderr
        stored = await read_to_end(reader)
        assert [e.event_id for e in stored] == [event["event_id"]] * 2
        assert stored[0].value["source"] == "dlq-replay" and stored[0].value["event_type"] == "loan_app"
        assert stored[0].key == b"late"
    finally:
        await reader.stop()


async def test_dlq_replay_resends_a_consumer_refused_record_to_its_topic(
    service: tuple[Namespace, ServiceProcess],
) -> None:
    ns, _ = service
    registry = SchemaRegistryClient.from_settings(ns.stack)
    serde = AvroSerde(registry, topic_prefix=ns.prefix)
    producer = EventProducer(ns.stack.kafka, serde, "features")
    await producer.start([EVENTS_RAW])
    reader = await TopicReader(ns, [EVENTS_RAW]).start()
    try:
        record, original = await dead_letter_as_a_consumer(
            producer,
            serde,
            ns,
            {**LOAN, "customer_id": "from-consumer"},
            entity_id="from-consumer",
            partition=2,
            offset=41,
        )
        done = await run_cli(ns, "dlq", "replay", "--source", "consumer:features")
        assert done.returncode == 0 and "resent=1" in done.stdout, done.stdout + done.stderr
        (back,) = await read_to_end(reader)
        assert back.raw == original and back.key == b"from-consumer" and back.event_id == record["event_id"]
    finally:
        await reader.stop()
        await producer.stop()
        await registry.close()
