"""The features service as a real process on the real stack: hand-computed windows, the online
store and its API, late events, re-deliveries and poison records."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import yaml

from driftline.catalog import EVENTS_DLQ, EVENTS_RAW, FEATURES_VECTORS
from driftline.events import derived_event_id, envelope
from driftline.producer import EventProducer
from driftline.serde import AvroSerde, SchemaRegistryClient
from tests.support import Namespace, ServiceProcess, TopicReader, eventually

T0 = datetime(2025, 1, 1, 10, 0, tzinfo=UTC)
ENV_PREFIX = "DRIFTLINE_FEATURES_"

WINDOW_1H = {"size": "1h", "lateness": "10m"}
TEST_PROJECT = {
    "name": "features-test",
    "event": {"type": "loan_application", "schema": "LoanApplication", "entity_key": "customer_id"},
    "label": {"name": "approved", "classes": ["deny", "approve"], "positive_class": "approve"},
    "features": {
        "version": "it-1",
        "raw": ["salary", "commission", "loan"],
        "derived": [
            {"name": "loan_to_commission", "expr": "loan / commission"},
            {"name": "loan_share", "function": "tests.integration.test_features:loan_share"},
        ],
        "windows": [
            {"name": "n_1h", "field": "loan", "agg": "count", "window": WINDOW_1H},
            {"name": "sum_1h", "field": "loan", "agg": "sum", "window": WINDOW_1H},
            {"name": "mean_1h", "field": "loan", "agg": "mean", "window": WINDOW_1H},
            {"name": "min_1h", "field": "loan", "agg": "min", "window": WINDOW_1H},
            {"name": "std_1h", "field": "loan", "agg": "stddev", "window": WINDOW_1H},
            {
                "name": "max_30m",
                "field": "loan",
                "agg": "max",
                "window": {"type": "hopping", "size": "30m", "step": "10m", "lateness": "10m"},
            },
        ],
    },
    "model": {"name": "features-test", "estimator": "sklearn.linear_model.LogisticRegression"},
}


def loan_share(row: Mapping[str, Any]) -> float | None:
    """A registered derived-feature function (imported by the service as module:function)."""
    loan, salary = row.get("loan"), row.get("salary")
    if not isinstance(loan, float) or not isinstance(salary, float):
        return None
    return loan / (loan + salary)


def raw_event(entity: str, minute: int, loan: float) -> dict[str, Any]:
    return {
        **envelope("features-test", event_time=T0 + timedelta(minutes=minute)),
        "event_type": "loan_application",
        "entity_id": entity,
        "payload": {"customer_id": entity, "salary": 1000.0, "commission": 0.0, "loan": loan},
        "source": "cli",
    }


@pytest.fixture
async def producer(namespace: Namespace) -> AsyncIterator[EventProducer]:
    registry = SchemaRegistryClient.from_settings(namespace.stack)
    p = EventProducer(namespace.stack.kafka, AvroSerde(registry, topic_prefix=namespace.prefix), "t")
    await p.start([EVENTS_RAW])
    yield p
    await p.stop()
    await registry.close()


async def test_windows_store_and_api_for_a_hand_computed_sequence(
    namespace: Namespace, producer: EventProducer, tmp_path: Path
) -> None:
    project_file = tmp_path / "project.yaml"
    project_file.write_text(yaml.safe_dump(TEST_PROJECT))
    service = ServiceProcess("driftline_features", namespace, env={"DRIFTLINE_PROJECT_FILE": str(project_file)})
    reader = await TopicReader(namespace, [FEATURES_VECTORS, EVENTS_DLQ]).start()
    service.start(ENV_PREFIX)
    try:
        await service.wait_ready(timeout_s=90)
        sequence = [
            ("e1", "c1", 5, 100.0),
            ("x1", "c2", 7, 5.0),  # another entity, interleaved: windows are per entity
            ("e2", "c1", 20, 300.0),
            ("e3", "c1", 50, 200.0),
            ("e4", "c1", 40, 50.0),  # out of order, within the lateness (watermark 10:50 - 10m)
            ("e5", "c1", 62, 400.0),  # next hour
            ("e6", "c1", 30, 999.0),  # late: 10:30 < 11:02 - 10m
            ("e3", "c1", 50, 200.0),  # re-delivery of e3 (same event id)
            ("e8", "c1", 70, 10.0),
        ]
        sent: dict[str, dict[str, Any]] = {}
        for name, entity, minute, loan in sequence:
            record = sent.get(name) or raw_event(entity, minute, loan)
            sent[name] = record
            await producer.publish(EVENTS_RAW, record)
        await producer.send_raw(EVENTS_RAW, b"\x00not avro at all", key=b"c1")
        await producer.flush()
        await reader.wait_for(
            lambda evs: (
                len([e for e in evs if e.topic == FEATURES_VECTORS]) >= len(sequence)
                and any(e.topic == EVENTS_DLQ for e in evs)
            ),
            timeout_s=90,
            what="every vector and the dead letter",
        )
        vectors = reader.on(FEATURES_VECTORS)
        by_source: dict[str, list[dict[str, Any]]] = {}
        for v in vectors:
            by_source.setdefault(v.value["source_event_id"], []).append(v.value)

        def features(name: str) -> dict[str, Any]:
            (first, *again) = by_source[sent[name]["event_id"]]
            assert all(a["features"] == first["features"] and a["event_id"] == first["event_id"] for a in again)
            assert first["event_id"] == derived_event_id(sent[name]["event_id"], "it-1")
            assert first["correlation_id"] == sent[name]["correlation_id"]
            assert first["causation_id"] == sent[name]["event_id"]
            return dict(first["features"])

        windows = ("n_1h", "sum_1h", "mean_1h", "min_1h", "std_1h", "max_30m")

        def w(name: str) -> tuple[Any, ...]:
            return tuple(features(name)[k] for k in windows)

        assert w("e1") == (1.0, 100.0, 100.0, 100.0, 0.0, 100.0)
        assert w("x1") == (1.0, 5.0, 5.0, 5.0, 0.0, 5.0)
        assert w("e2") == (2.0, 400.0, 200.0, 100.0, 100.0, 300.0)
        assert w("e3") == (3.0, 600.0, 200.0, 100.0, math.sqrt(20000 / 3), 200.0)
        assert w("e4") == (3.0, 450.0, 150.0, 50.0, math.sqrt(35000 / 3), 300.0)  # without e3 (10:50)
        assert w("e5") == (1.0, 400.0, 400.0, 400.0, 0.0, 400.0)
        assert w("e6") == (2.0, 400.0, 200.0, 100.0, 100.0, 300.0)  # late: the windows as they stood
        assert w("e8") == (2.0, 410.0, 205.0, 10.0, 195.0, 400.0)  # e3 once, e6 never
        assert len(by_source[sent["e3"]["event_id"]]) == 2  # re-emitted, same vector
        e1 = features("e1")
        assert e1["salary"] == 1000.0 and e1["loan_to_commission"] is None  # division by zero
        assert e1["loan_share"] == pytest.approx(100.0 / 1100.0)
        late = {v.value["source_event_id"]: v.value["late"] for v in vectors}
        assert late[sent["e6"]["event_id"]] is True
        assert sum(late.values()) == 1
        (dead,) = reader.on(EVENTS_DLQ)
        assert dead.value["error_type"] == "decode_error" and dead.value["original"] == b"\x00not avro at all"

        # Online store: one row per source event, the latest per entity by event time.
        conn = await asyncpg.connect(namespace.stack.postgres_dsn.get_secret_value())
        try:
            rows = await conn.fetch("SELECT source_event_id, late, features FROM features.vectors")
            assert sorted(r["source_event_id"] for r in rows) == sorted(r["event_id"] for r in sent.values())
        finally:
            await conn.close()
        async with httpx.AsyncClient(base_url=service.url) as http:
            r = await http.get("/v1/features/c1")
            assert r.status_code == 200
            body = r.json()
            assert body["source_event_id"] == sent["e8"]["event_id"]  # not the late e6, not e5
            assert body["features"]["sum_1h"] == 410.0 and body["feature_set_version"] == "it-1"
            r = await http.get("/v1/features/c2")
            assert r.json()["source_event_id"] == sent["x1"]["event_id"]
            r = await http.get("/v1/features/nobody")
            assert r.status_code == 404 and r.json()["detail"]["error"] == "not_found"
            r = await http.get("/v1/features/c1", params={"version": "other"})
            assert r.status_code == 404

            # The faust app's group reports its lag like every consumer group: all processed.
            group, topic = f"{namespace.prefix}features", f"{namespace.prefix}{EVENTS_RAW}"

            async def lag_drained() -> None:
                text = (await http.get("/metrics")).text
                series = [
                    line
                    for line in text.splitlines()
                    if line.startswith("driftline_consumer_lag{") and f'group="{group}"' in line
                ]
                assert series and all(f'topic="{topic}"' in line for line in series), text[-2000:]
                assert {float(line.rsplit(" ", 1)[1]) for line in series} == {0.0}, series

            await eventually(lag_drained, timeout_s=30)

            async def metrics_counted() -> str:
                text = (await http.get("/metrics")).text
                assert "driftline_features_late_events_total 1.0" in text
                assert 'driftline_features_events_total{outcome="dead_lettered"} 1.0' in text
                assert 'driftline_features_events_total{outcome="duplicate"} 1.0' in text
                return text

            text = await eventually(metrics_counted)
            assert "driftline_features_store_write_seconds_count" in text
            assert "driftline_features_consumer_lag" in text
            assert (await http.get("/readyz")).status_code == 200
    finally:
        await reader.stop()
        assert service.stop() in (0, -15)  # SIGTERM: a clean shutdown
    assert '"features_stopped"' in service.log_path.read_text()
