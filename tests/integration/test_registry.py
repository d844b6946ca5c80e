"""The registry service on the real stack, run as a real process, fed with models.trained records."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
from typer.testing import CliRunner

from driftline.catalog import DEPLOYMENTS_STATUS, MODELS_PROMOTED, MODELS_REJECTED, MODELS_TRAINED
from driftline.events import Event, derived_event_id, envelope, new_event_id
from driftline.producer import EventProducer
from driftline.project import load_project
from driftline.settings import LOCAL_API_TOKEN
from driftline_cli.main import app as cli
from tests.integration.test_training import producer as producer
from tests.support import Namespace, ServiceProcess, TopicReader, eventually

AUTH = {"Authorization": f"Bearer {LOCAL_API_TOKEN}"}
MODEL = load_project().model.name
POLICY = load_project().promotion  # accuracy, margin 0.0, floor 0.65


def trained_record(
    accuracy: float, *, champion_version: int | None = None, champion_accuracy: float | None = None
) -> dict[str, Any]:
    run_id = new_event_id()
    sha = new_event_id().replace("-", "")
    return {
        **envelope("test-training", event_id=derived_event_id("model-trained", run_id)),
        "run_id": run_id,
        "model_name": MODEL,
        "artifact_bucket": "bucket",
        "artifact_key": f"models/{MODEL}/{run_id}/model.skops",
        "artifact_sha256": "ab" * 32,
        "metadata_key": f"models/{MODEL}/{run_id}/metadata.json",
        "metadata_sha256": "cd" * 32,
        "metrics": {"accuracy": accuracy, "f1": accuracy - 0.05},
        "champion_metrics": None if champion_accuracy is None else {"accuracy": champion_accuracy},
        "champion_version": champion_version,
        "dataset_fingerprint": "f" * 64,
        "holdout_fingerprint": "e" * 64,
        "feature_set_version": "1",
        "feature_names": ["salary", "age"],
        "params": {"max_iter": "150"},
        "n_train": 300,
        "n_holdout": 100,
        "duration_s": 1.5,
        "trigger": "request",
        "drift_episode_id": None,
        "training_request_id": new_event_id(),
        "training_set_key": f"models/{MODEL}/{run_id}/training-set-{sha}.parquet",
        "training_set_sha256": sha,
        "training_set_size": 12345,
        "labels_as_of": datetime(2026, 1, 2, 1, tzinfo=UTC),
        "train_start": datetime(2026, 1, 1, tzinfo=UTC),
        "holdout_end": datetime(2026, 1, 2, tzinfo=UTC),
        "code_version": f"commit-{run_id[:8]}",
    }


def start_registry(namespace: Namespace, **env: str) -> ServiceProcess:
    return ServiceProcess("driftline_registry", namespace, env=env).start("DRIFTLINE_REGISTRY_")


def decisions(reader: TopicReader) -> list[Event]:
    return [e for e in reader.events if e.topic in (MODELS_PROMOTED, MODELS_REJECTED)]


async def wait_decision(reader: TopicReader, run_id: str) -> Event:
    def found(_: list[Event]) -> bool:
        return any(e.value["run_id"] == run_id for e in decisions(reader))

    await reader.wait_for(found, timeout_s=60, what=f"decision on run {run_id}")
    return next(e for e in decisions(reader) if e.value["run_id"] == run_id)


async def registry_state(client: httpx.AsyncClient) -> dict[str, Any]:
    """What the registry knows, as its API shows it, minus bookkeeping times and row ids."""
    models = (await client.get("/v1/models")).json()["models"]
    versions = (await client.get(f"/v1/models/{MODEL}/versions")).json()["versions"]
    history = (await client.get(f"/v1/models/{MODEL}/history")).json()["history"]
    return {
        "models": [{k: m[k] for k in ("name", "champion_version", "challenger_version", "versions")} for m in models],
        "versions": [{k: x for k, x in v.items() if k != "registered_at"} for v in versions],
        "history": sorted(({k: h[k] for k in h if k != "id"} for h in history), key=lambda h: (h["at"], h["event_id"])),
    }


async def test_the_registry_promotes_rejects_rolls_back_and_rebuilds_from_the_log(
    namespace: Namespace, producer: EventProducer
) -> None:
    assert (POLICY.metric, POLICY.margin, POLICY.floor) == ("accuracy", 0.0, 0.65)
    reader = await TopicReader(namespace, [MODELS_PROMOTED, MODELS_REJECTED]).start()
    registry = start_registry(namespace)
    try:
        await registry.wait_ready(timeout_s=120)
        low = trained_record(0.5)
        first = trained_record(0.8)
        worse = trained_record(0.78, champion_version=2, champion_accuracy=0.8)
        stale = trained_record(0.95)  # did not evaluate the champion: no fair comparison
        better = trained_record(0.9, champion_version=2, champion_accuracy=0.8)
        for record in (low, first, worse, stale, better):
            await producer.publish(MODELS_TRAINED, record)

        rejected_low = await wait_decision(reader, low["run_id"])
        assert rejected_low.topic == MODELS_REJECTED and rejected_low.value["version"] == 1
        assert "below the floor" in rejected_low.value["reason"]

        promoted_first = await wait_decision(reader, first["run_id"])
        assert promoted_first.topic == MODELS_PROMOTED
        p = promoted_first.value
        assert (p["version"], p["previous_version"], p["action"], p["actor"]) == (2, None, "promote", "policy")
        assert p["event_id"] == derived_event_id("promotion", MODEL, 2)
        assert p["causation_id"] == first["event_id"] and p["correlation_id"] == first["correlation_id"]
        assert (p["artifact_key"], p["artifact_sha256"]) == (first["artifact_key"], first["artifact_sha256"])
        assert p["feature_names"] == first["feature_names"]

        rejected_worse = await wait_decision(reader, worse["run_id"])
        assert rejected_worse.topic == MODELS_REJECTED
        w = rejected_worse.value
        assert (w["version"], w["metric"], w["candidate_value"], w["champion_value"]) == (3, "accuracy", 0.78, 0.8)

        rejected_stale = await wait_decision(reader, stale["run_id"])
        assert rejected_stale.topic == MODELS_REJECTED
        assert "no comparison on the same holdout" in rejected_stale.value["reason"]

        promoted_better = await wait_decision(reader, better["run_id"])
        assert promoted_better.topic == MODELS_PROMOTED
        assert (promoted_better.value["version"], promoted_better.value["previous_version"]) == (5, 2)

        # Replaying models.trained is idempotent: the same runs get no new version and no new event.
        before = len(decisions(reader))
        await producer.publish(MODELS_TRAINED, first)
        await producer.publish(MODELS_TRAINED, better)
        sentinel = trained_record(0.6)
        await producer.publish(MODELS_TRAINED, sentinel)
        assert (await wait_decision(reader, sentinel["run_id"])).value["version"] == 6
        assert len(decisions(reader)) == before + 1

        async with httpx.AsyncClient(base_url=registry.url, timeout=30) as client:
            models = (await client.get("/v1/models")).json()["models"]
            assert [(m["name"], m["champion_version"], m["latest_version"]) for m in models] == [(MODEL, 5, 6)]
            by_policy = (await client.get(f"/v1/models/{MODEL}/versions")).json()["versions"]
            assert [v["stage"] for v in by_policy] == [
                "rejected", "archived", "rejected", "rejected", "champion", "rejected",
            ]  # fmt: skip

            # Write endpoints need a token; unknown models and versions are 404.
            assert (await client.post(f"/v1/models/{MODEL}/rollback")).status_code == 401
            bad = {"Authorization": "Bearer nope"}
            assert (await client.post(f"/v1/models/{MODEL}/rollback", headers=bad)).status_code == 403
            assert (await client.post("/v1/models/nope/rollback", headers=AUTH)).status_code == 404
            assert (await client.post(f"/v1/models/{MODEL}/versions/99/promote", headers=AUTH)).status_code == 404
            assert (await client.get(f"/v1/models/{MODEL}/versions/99")).status_code == 404
            # Past the versions' integer column: refused with a reason, not a server error.
            r = await client.get(f"/v1/models/{MODEL}/versions/302672845352278142484480")
            assert r.status_code == 422 and "version" in r.text, r.text
            assert (await client.get(f"/v1/models/{MODEL}/versions", params={"stage": "x\x00"})).status_code < 500
            assert (await client.post(f"/v1/models/{MODEL}/versions/5/promote", headers=AUTH)).status_code == 409

            # Rollback: the previous champion comes back, announced on models.promoted.
            r = await client.post(f"/v1/models/{MODEL}/rollback", json={"reason": "bad canary"}, headers=AUTH)
            assert r.status_code == 200, r.text
            rollback = r.json()
            assert (rollback["version"], rollback["previous_version"], rollback["action"]) == (2, 5, "rollback")
            await reader.wait_for(lambda evs: any(e.event_id == rollback["event_id"] for e in evs), what="rollback")
            event = next(e for e in reader.events if e.event_id == rollback["event_id"])
            assert event.topic == MODELS_PROMOTED
            assert (event.value["version"], event.value["action"], event.value["actor"]) == (2, "rollback", "local")
            assert event.value["reason"] == "bad canary" and event.value["artifact_key"] == first["artifact_key"]
            # Nothing earlier to roll back to (v5 was rolled back, v2 is the first champion).
            r = await client.post(f"/v1/models/{MODEL}/rollback", headers=AUTH)
            assert r.status_code == 409 and "no earlier champion" in r.text

            # Manual promotion and a shadow (challenger) deployment, both with the actor.
            r = await client.post(f"/v1/models/{MODEL}/versions/3/promote", headers=AUTH)
            assert r.status_code == 200 and (r.json()["previous_version"], r.json()["actor"]) == (2, "local")
            # The shadow deployment through the CLI, which calls the same API.
            out = CliRunner().invoke(cli, ["models", "shadow", MODEL, "5", "--url", registry.url, "-r", "canary"])
            assert out.exit_code == 0, out.output
            assert "shadow" in out.output and f"{MODEL} v5" in out.output
            shadow_id = out.output.split("event ")[1].split()[0]
            await reader.wait_for(lambda evs: any(e.event_id == shadow_id for e in evs), what="shadow")
            model = (await client.get(f"/v1/models/{MODEL}")).json()
            assert (model["champion_version"], model["challenger_version"]) == (3, 5)

            # What deployment did is part of the lineage.
            status_event = {
                **envelope("test-deployment", cause=event.value),
                "model_name": MODEL,
                "version": 2,
                "slot": "champion",
                "status": "loaded",
                "reason": "hot-swapped",
                "instance_id": "deployment-1",
                "load_seconds": 0.2,
            }
            await producer.publish(DEPLOYMENTS_STATUS, status_event)

            async def deployment_recorded() -> dict[str, Any]:
                detail = (await client.get(f"/v1/models/{MODEL}/versions/2")).json()
                assert any(h["action"] == "deployment" for h in detail["history"]), detail["history"]
                return detail

            v2 = await eventually(deployment_recorded, timeout_s=60)
            actions = [(h["action"], h["actor"]) for h in reversed(v2["history"])]
            assert actions == [
                ("registered", "test-training"),
                ("promote", "policy"),
                ("rollback", "local"),
                ("deployment", "deployment:deployment-1"),
            ]
            assert v2["lineage"]["run_id"] == first["run_id"]
            assert v2["lineage"]["correlation_id"] == first["correlation_id"]
            # The model card: what it was trained on, how it was judged, where it came from and went.
            ts = v2["training_set"]
            assert (ts["key"], ts["sha256"], ts["size"]) == (
                first["training_set_key"],
                first["training_set_sha256"],
                first["training_set_size"],
            )
            assert (ts["rows"], ts["n_train"], ts["n_holdout"]) == (400, 300, 100)
            assert ts["start"].startswith("2026-01-01T00:00:00") and ts["end"].startswith("2026-01-02T00:00:00")
            assert v2["holdout_metrics"] == first["metrics"] and v2["params"] == first["params"]
            assert v2["code_version"] == first["code_version"]
            assert v2["comparison"]["champion_version"] is None
            lineage = v2["lineage"]
            assert lineage["trained_event_id"] == first["event_id"] and lineage["version"] == 2
            assert lineage["training_request_id"] == first["training_request_id"]
            assert lineage["promotion"]["event_id"] == p["event_id"] and lineage["promotion"]["action"] == "promote"
            assert [d["event_id"] for d in lineage["deployments"]] == [status_event["event_id"]]
            assert lineage["deployments"][0]["instance_id"] == "deployment-1"
            out = CliRunner().invoke(cli, ["models", "show", MODEL, "2", "--url", registry.url])
            assert out.exit_code == 0, out.output
            shown_fields = ("400: 300 train + 100 holdout", first["code_version"], "rollback", "deployment-1", "loaded")
            for shown in shown_fields:
                assert shown in out.output, (shown, out.output)
            out = CliRunner().invoke(cli, ["models", "show", MODEL, "2", "--url", registry.url, "--json"])
            assert json.loads(out.output)["lineage"] == lineage
            history = (await client.get(f"/v1/models/{MODEL}/history")).json()["history"]
            assert [h["action"] for h in history[:4]] == ["deployment", "shadow", "promote", "rollback"]
            out = CliRunner().invoke(cli, ["models", "history", MODEL, "--url", registry.url])
            assert out.exit_code == 0 and "rollback" in out.output and "canary" in out.output, out.output
            out = CliRunner().invoke(cli, ["models", "rollback", "nope", "--url", registry.url])
            assert out.exit_code == 1 and "404" in out.output
            # A new champion empties the challenger slot, as deployment empties its own.
            r = await client.post(f"/v1/models/{MODEL}/versions/2/promote", headers=AUTH)
            assert r.status_code == 200 and r.json()["previous_version"] == 3
            promoted_id = r.json()["event_id"]
            await reader.wait_for(lambda evs: any(e.event_id == promoted_id for e in evs), what="promotion of v2")
            model = (await client.get(f"/v1/models/{MODEL}")).json()
            assert (model["champion_version"], model["challenger_version"]) == (2, None)
            after_manual_actions = await registry_state(client)
    finally:
        registry.stop()

    # Rebuild: an empty registry (a new consumer group replays models.trained from the beginning,
    # and the registry reads its own decision topics back) reaches the state after the manual
    # actions, not the policy's original decisions, and announces nothing again.
    conn = await asyncpg.connect(namespace.stack.postgres_dsn.get_secret_value())
    try:
        await conn.execute("DROP SCHEMA registry CASCADE")
    finally:
        await conn.close()
    seen = len(reader.events)
    rebuilt = start_registry(namespace, DRIFTLINE_REGISTRY_GROUP_ID="registry-rebuild")
    try:
        await rebuilt.wait_ready(timeout_s=120)
        async with httpx.AsyncClient(base_url=rebuilt.url, timeout=30) as client:

            async def rebuilt_state() -> dict[str, Any]:
                state = await registry_state(client)
                assert state == after_manual_actions, state
                return state

            state = await eventually(rebuilt_state, timeout_s=60)
            # v5 was rolled back, v3 then v2 promoted by hand: v5 does not return to service.
            assert [(m["champion_version"], m["challenger_version"]) for m in state["models"]] == [(2, None)]
            assert [v["stage"] for v in state["versions"]] == [
                "rejected", "champion", "archived", "rejected", "rolled_back", "rejected",
            ]  # fmt: skip
            manual = [(h["action"], h["version"], h["actor"]) for h in state["history"] if h["actor"] == "local"]
            assert manual == [
                ("rollback", 2, "local"), ("promote", 3, "local"), ("shadow", 5, "local"), ("promote", 2, "local"),
            ]  # fmt: skip

            # Nothing was announced again: the next run's decision is the only new event.
            after = trained_record(0.7)
            await producer.publish(MODELS_TRAINED, after)
            decided = await wait_decision(reader, after["run_id"])
            assert decided.topic == MODELS_REJECTED and decided.value["version"] == 7
            assert "champion is v2" in decided.value["reason"]
            new_decisions = [e for e in reader.events[seen:] if e.topic in (MODELS_PROMOTED, MODELS_REJECTED)]
            assert [e.event_id for e in new_decisions] == [decided.event_id]
    finally:
        rebuilt.stop()
        await reader.stop()
