"""Chaos: HTTP load through the six services while each is SIGKILLed and restarted, and the Kafka
broker, PostgreSQL, MinIO and the schema registry go down and come back; then count by event id
at every sink and topic.

On a fresh namespace of the running stack the six services run as real processes with their
default settings (the example loan-approval project). A seeded loan stream is posted over HTTP
with the SDK (``--rate`` events/s, labels ``--label-delay`` events behind, a concept drift at half
the stream), with ``--malformed`` refused requests spread over it (a payload field of the wrong
type: each must get a 4xx and its record must be in ``events.dlq``). Once the first model serves:

1. ``--kills`` SIGKILLs, round-robin over the six services, ``--kill-every`` seconds apart; each
   killed service is restarted at once, as a process manager would, on the same port. Per restart:
   seconds until ``/readyz`` answers 200, and until the new process does work again (its
   ``driftline_produced_total`` / ``driftline_consumed_total`` / ingestion / prediction counters
   leave 0; "idle" when no work came in two minutes; the registry, whose input comes only with a
   training, is measured by readiness);
2. spread over the kills, each stack component of ``--outages`` is taken down for
   ``--outage-s`` seconds and started again — the broker SIGKILLed, PostgreSQL, MinIO and the
   schema registry stopped by ``infra/stack.sh stop`` — while the load goes on: every service's
   ``/readyz`` is sampled each second meanwhile (the share of samples that said "not ready"), and
   the seconds until all six are ready again after its start;
3. after the load: the time until no consumer group of the namespace has lag left (``--settle-s``
   at most), and the counts. *Lost* = an accepted event without its effect at that place
   (raw record, feature vector, stored vector, training row, champion prediction once a model
   served, label); *doubled* = one source event with more than one distinct effect (two vector
   ids, two champion predictions, a second ``loaded`` status for the same promotion); a row
   count guaranteed by a primary key is not a check, so sinks are counted by source event id.

The figures are printed as a table (and ``--json PATH``); exit status 1 when anything was lost or
doubled, a malformed request got no 4xx or no dead letter, or lag was left. Not part of
``make test`` (about 6 minutes with the defaults):

    make chaos                     # on the test stack, started and wiped around the run
    DRIFTLINE_STATE_DIR=.state/test .venv/bin/python bench/chaos.py [--events 30000] [--rate 150]
        [--kills 20] [--kill-every 8] [--outages kafka,postgres,minio,apicurio] [--outage-s 15]
        [--malformed 500] [--seed 7] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402
import httpx  # noqa: E402
from aiokafka import AIOKafkaConsumer, TopicPartition  # noqa: E402
from aiokafka.admin import AIOKafkaAdminClient  # noqa: E402

from driftline.catalog import (  # noqa: E402
    DEPLOYMENTS_STATUS,
    EVENTS_DLQ,
    EVENTS_RAW,
    FEATURES_VECTORS,
    LABELS,
    PREDICTIONS,
)
from driftline.history import read_topics  # noqa: E402
from driftline.settings import LOCAL_API_TOKEN, StackSettings  # noqa: E402
from driftline_cli.examples.loan_approval.generator import Item, LoanStream  # noqa: E402
from driftline_sdk import Publisher, PublishError  # noqa: E402
from tests.support import Namespace, ServiceProcess, create_namespace, drop_namespace  # noqa: E402

COMPONENTS = ("kafka", "postgres", "minio", "apicurio")
SERVICES = ("ingestion", "features", "training", "registry", "deployment", "monitoring")
WORK_METRICS = (
    "driftline_produced_total",
    "driftline_consumed_total",
    "driftline_ingestion_accepted_total",
    "driftline_deployment_predictions_total",
)
MODEL = "loan-approval"  # the example project's model (the services' default project)
FIRST_MODEL_EXAMPLES = 600
NO_STEADY_INPUT = {"registry"}  # consumes models.trained only: no work to wait for between trainings
HEADERS = {"Authorization": f"Bearer {LOCAL_API_TOKEN}"}


# -- probes -------------------------------------------------------------------------------------------


async def work_done(http: httpx.AsyncClient, url: str) -> float | None:
    """The sum of a process's work counters, or None when it does not answer."""
    try:
        text = (await http.get(f"{url}/metrics", timeout=3)).text
    except httpx.HTTPError:
        return None
    total = 0.0
    for line in text.splitlines():
        if line.startswith(WORK_METRICS) and not line.startswith("#"):
            name = line.split("{", 1)[0].split(" ", 1)[0]
            if name in WORK_METRICS:
                total += float(line.rsplit(" ", 1)[1])
    return total


async def is_ready(http: httpx.AsyncClient, url: str) -> bool:
    try:
        return (await http.get(f"{url}/readyz", timeout=3)).status_code == 200
    except httpx.HTTPError:
        return False


# -- load ---------------------------------------------------------------------------------------------


@dataclass
class Load:
    stream: LoanStream
    label_delay: int
    malformed_every: int
    accepted: set[str] = field(default_factory=set)
    labelled: set[str] = field(default_factory=set)
    malformed: dict[str, int] = field(default_factory=dict)  # event id → HTTP status
    pending: list[Item] = field(default_factory=list)
    publish_retries: int = 0
    batches: int = 0
    ended_at: float | None = None  # monotonic, once the last event and label were accepted

    async def run(self, pub: Publisher, http: httpx.AsyncClient, ingestion: str, n: int, rate: float) -> None:
        batch = 25
        interval = batch / rate
        sent = 0
        while sent < n:
            started = time.monotonic()
            items = list(self.stream.take(min(batch, n - sent)))
            await self._publish(pub, items)
            sent += len(items)
            self.pending += items
            due = self.pending[: max(0, len(self.pending) - self.label_delay)]
            if due:
                self.pending = self.pending[len(due) :]
                await self._label(pub, due)
            self.batches += 1
            if self.malformed_every and self.batches % self.malformed_every == 0:
                await self._malformed(http, ingestion, items[0])
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))
        await self._label(pub, self.pending)
        self.pending = []
        self.ended_at = time.monotonic()

    async def _publish(self, pub: Publisher, items: list[Item]) -> None:
        while True:  # the same events (same ids) until accepted: a retry is recognised downstream
            try:
                result = await pub.publish([it.event for it in items])
            except PublishError:
                self.publish_retries += 1
                continue
            if result.rejected:
                raise RuntimeError(f"ingestion refused generated events: {result.errors[:3]}")
            if result.accepted + result.duplicates < len(items):
                self.publish_retries += 1
                continue  # some failed (503 during an outage): send them again
            self.accepted.update(it.event_id for it in items)
            return

    async def _label(self, pub: Publisher, items: list[Item]) -> None:
        if not items:
            return
        while True:
            try:
                result = await pub.publish_labels([it.label_record() for it in items])
            except PublishError:
                self.publish_retries += 1
                continue
            if result.accepted + result.duplicates + result.rejected >= len(items):
                self.labelled.update(it.event_id for it in items)
                return
            self.publish_retries += 1

    async def _malformed(self, http: httpx.AsyncClient, ingestion: str, like: Item) -> None:
        event_id = str(uuid.uuid4())
        payload = {**like.event["payload"], "salary": "a lot"}  # wrong type: refused
        body = {"events": [{**like.event, "event_id": event_id, "payload": payload}]}
        for _ in range(60):
            try:
                resp = await http.post(f"{ingestion}/v1/events", json=body, headers=HEADERS, timeout=10)
            except httpx.HTTPError:
                await asyncio.sleep(1)
                continue
            if resp.status_code in (502, 503):
                await asyncio.sleep(1)  # ingestion cannot reach the broker: not an answer about the record
                continue
            self.malformed[event_id] = resp.status_code
            return
        self.malformed[event_id] = 0


# -- chaos --------------------------------------------------------------------------------------------


@dataclass
class Restart:
    service: str
    at: float
    ready_s: float | None = None
    working_s: float | None = None  # None: no work within the wait (no input), or never ready


class Chaos:
    def __init__(self, ns: Namespace, procs: dict[str, ServiceProcess], args: argparse.Namespace) -> None:
        self.ns = ns
        self.procs = procs
        self.args = args
        self.restarts: list[Restart] = []
        self.outages: dict[str, dict[str, Any]] = {}
        self._measuring: list[asyncio.Task[None]] = []
        self.victims = [s.strip() for s in args.kill_services.split(",") if s.strip()]
        if unknown := set(self.victims) - set(SERVICES):
            raise SystemExit(f"--kill-services: no service {sorted(unknown)}; one of {', '.join(SERVICES)}")

    def _restart(self, name: str) -> Restart:
        old = self.procs[name]
        old.kill()
        new = ServiceProcess(old.module, self.ns, env=old.extra_env, port=old.port).start(f"DRIFTLINE_{name.upper()}_")
        self.procs[name] = new
        r = Restart(name, time.monotonic())
        self.restarts.append(r)
        self._measuring.append(asyncio.create_task(self._measure(new, r)))
        return r

    async def _measure(self, proc: ServiceProcess, r: Restart, wait_s: float = 120.0) -> None:
        async with httpx.AsyncClient() as http:
            while time.monotonic() - r.at < wait_s:
                if r.ready_s is None and await is_ready(http, proc.url):
                    r.ready_s = round(time.monotonic() - r.at, 1)
                    if r.service in NO_STEADY_INPUT:
                        return  # its input comes now and then: readiness is what can be measured
                work = await work_done(http, proc.url)
                if work:
                    r.working_s = round(time.monotonic() - r.at, 1)
                    return
                await asyncio.sleep(0.25)

    async def run(self) -> None:
        a = self.args
        outages = [c.strip() for c in a.outages.split(",") if c.strip()] if a.outage_s > 0 else []
        if unknown := set(outages) - set(COMPONENTS):
            raise SystemExit(f"--outages: no component {sorted(unknown)}; one of {', '.join(COMPONENTS)}")
        # the outages spread evenly over the kills (after them when there are none)
        at = [(round((i + 1) * a.kills / (len(outages) + 1)), c) for i, c in enumerate(outages)]
        for k in range(a.kills):
            for _, component in [x for x in at if x[0] == k]:
                await self.outage(component)
            name = self.victims[k % len(self.victims)]
            self._restart(name)
            print(f"  kill {k + 1}/{a.kills}: {name} SIGKILLed and restarted", flush=True)
            await asyncio.sleep(a.kill_every)
        for _, component in [x for x in at if x[0] >= a.kills]:
            await self.outage(component)
        await asyncio.gather(*self._measuring)

    async def outage(self, component: str) -> None:
        """The component down for ``--outage-s``: the broker SIGKILLed (a crash), the others
        stopped by the stack script; then started again by the stack script."""
        stack_sh = str(ROOT / "infra" / "stack.sh")
        if component == "kafka":
            pid_file = Path(os.environ.get("DRIFTLINE_STATE_DIR", ROOT / ".state" / "dev")) / "run" / "kafka.pid"
            os.kill(int(pid_file.read_text().strip()), signal.SIGKILL)
            how = "SIGKILLed"
        else:
            stopped = await asyncio.to_thread(subprocess.run, [stack_sh, "stop", component], capture_output=True)
            if stopped.returncode != 0:
                raise RuntimeError(f"{component} did not stop: {stopped.stderr.decode()[-2000:]}")
            how = "stopped"
        print(f"  {component} {how} for {self.args.outage_s} s", flush=True)
        down_at = time.monotonic()
        samples: dict[str, list[bool]] = defaultdict(list)
        async with httpx.AsyncClient() as http:
            await asyncio.sleep(3)  # what a readiness check may take to notice (its own timeout)
            while time.monotonic() - down_at < self.args.outage_s:
                for name, proc in self.procs.items():
                    samples[name].append(await is_ready(http, proc.url))
                await asyncio.sleep(1)
            started = await asyncio.to_thread(subprocess.run, [stack_sh, "start", component], capture_output=True)
            if started.returncode != 0:
                raise RuntimeError(f"{component} did not start again: {started.stderr.decode()[-2000:]}")
            up_at = time.monotonic()
            ready_after: dict[str, float | None] = dict.fromkeys(self.procs)
            while any(v is None for v in ready_after.values()) and time.monotonic() - up_at < 120:
                for name, proc in self.procs.items():
                    if ready_after[name] is None and await is_ready(http, proc.url):
                        ready_after[name] = round(time.monotonic() - up_at, 1)
                await asyncio.sleep(0.5)
        self.outages[component] = {
            "down_s": round(up_at - down_at, 1),
            "not_ready_share": {n: round(1 - sum(s) / len(s), 2) if s else None for n, s in samples.items()},
            "ready_again_s": ready_after,
        }


# -- settling and counting ----------------------------------------------------------------------------


async def group_lag(stack: StackSettings) -> dict[str, int]:
    """Lag per consumer group of the namespace (records between its committed offsets and the end)."""
    admin = AIOKafkaAdminClient(**stack.kafka.client_kwargs())
    consumer = AIOKafkaConsumer(**stack.kafka.client_kwargs())
    await admin.start()
    await consumer.start()
    try:
        groups = [g[0] for g in await admin.list_consumer_groups() if g[0].startswith(stack.topic_prefix)]
        lag: dict[str, int] = {}
        for g in groups:
            committed = await admin.list_consumer_group_offsets(g)
            tps = [tp for tp in committed if isinstance(tp, TopicPartition)]
            if not tps:
                continue
            end = await consumer.end_offsets(tps)
            lag[g] = sum(max(0, end[tp] - committed[tp].offset) for tp in tps if committed[tp].offset >= 0)
        return lag
    finally:
        await consumer.stop()
        await admin.close()


async def settle(stack: StackSettings, timeout_s: float) -> tuple[float | None, dict[str, int]]:
    start = time.monotonic()
    lag: dict[str, int] = {}
    while time.monotonic() - start < timeout_s:
        lag = await group_lag(stack)
        if lag and not any(lag.values()):
            return round(time.monotonic() - start, 1), lag
        await asyncio.sleep(2)
    return None, {g: n for g, n in lag.items() if n}


def _by_source(events: list[Any], *, champion_only: bool = False) -> dict[str, set[str]]:
    out: dict[str, set[str]] = defaultdict(set)
    for e in events:
        v = e.value
        if champion_only and (v.get("slot") != "champion" or v.get("shadow")):
            continue
        out[v["source_event_id"]].add(v["event_id"])
    return out


async def count(stack: StackSettings, load: Load) -> dict[str, Any]:
    topics = await read_topics(
        stack, [EVENTS_RAW, FEATURES_VECTORS, PREDICTIONS, LABELS, EVENTS_DLQ, DEPLOYMENTS_STATUS]
    )
    by_topic: dict[str, list[Any]] = defaultdict(list)
    for e in topics:
        by_topic[e.topic].append(e)
    raw_ids = {e.value["event_id"] for e in by_topic[EVENTS_RAW]}
    dlq = by_topic[EVENTS_DLQ]
    dead_lettered_originals = b"\n".join(e.value.get("original") or b"" for e in dlq)
    dead_lettered_ids = {
        i for i in load.accepted if i.encode() in dead_lettered_originals
    }  # accepted but refused later (none expected)
    vectors = _by_source(by_topic[FEATURES_VECTORS])
    predictions = _by_source(by_topic[PREDICTIONS], champion_only=True)
    statuses = [e.value for e in by_topic[DEPLOYMENTS_STATUS]]
    loaded = [s for s in statuses if s["status"] == "loaded" and s["slot"] == "champion"]
    first_served = min((s["produced_at"].timestamp() for s in loaded), default=None)
    after_first_model = {
        e.value["source_event_id"]
        for e in by_topic[FEATURES_VECTORS]
        if first_served is not None and e.value["produced_at"].timestamp() > first_served + 5
    }
    loads_per_promotion: dict[tuple[str, int, str], set[str]] = defaultdict(set)
    for s in loaded:  # one announcement per promotion and deployment instance, whatever restarts
        loads_per_promotion[(s["model_name"], s["version"], s["instance_id"])].add(s["event_id"])
    labels_seen = {e.value["labelled_event_id"] for e in by_topic[LABELS]}

    conn = await asyncpg.connect(stack.postgres_dsn.get_secret_value(), ssl=stack.postgres_ssl())
    try:
        fv_rows = {
            r["source_event_id"]: r["n"]
            for r in await conn.fetch("SELECT source_event_id, count(*) AS n FROM features.vectors GROUP BY 1")
        }
        tv_rows = {
            r["source_event_id"]: r["n"]
            for r in await conn.fetch("SELECT source_event_id, count(*) AS n FROM training.vectors GROUP BY 1")
        }
        tl_rows = {r["labelled_event_id"] for r in await conn.fetch("SELECT labelled_event_id FROM training.labels")}
    finally:
        await conn.close()

    expected = load.accepted - dead_lettered_ids
    rows = {
        "events.raw (topic)": (len(expected - raw_ids), 0),
        "features.vectors (topic)": (len(expected - set(vectors)), sum(len(v) > 1 for v in vectors.values())),
        "features.vectors (online store)": (len(expected - set(fv_rows)), sum(n > 1 for n in fv_rows.values())),
        "training.vectors (table)": (len(expected - set(tv_rows)), sum(n > 1 for n in tv_rows.values())),
        "labels (topic)": (len(load.labelled - labels_seen), 0),
        "training.labels (table)": (len(load.labelled - tl_rows), 0),
        "predictions, champion (topic)": (
            len(after_first_model - set(predictions)),
            sum(len(v) > 1 for v in predictions.values()),
        ),
        "deployments.status loaded": (0, sum(len(n) > 1 for n in loads_per_promotion.values())),
    }
    refused = {i: s for i, s in load.malformed.items() if 400 <= s < 500}
    in_dlq = {i for i in load.malformed if i.encode() in dead_lettered_originals}
    return {
        "accepted": len(load.accepted),
        "labelled": len(load.labelled),
        "publish_retries": load.publish_retries,
        "accepted_later_dead_lettered": len(dead_lettered_ids),
        "sinks": {k: {"lost": lost, "doubled": doubled} for k, (lost, doubled) in rows.items()},
        "malformed": {"sent": len(load.malformed), "got_4xx": len(refused), "in_dlq": len(in_dlq)},
        "promotions_loaded": len(loads_per_promotion),
    }


# -- the run ------------------------------------------------------------------------------------------


async def first_model(training: str, deployment: str, timeout_s: float) -> float:
    """Asks for the first model once training holds enough labelled examples (as an operator
    does for the example project); seconds until it serves."""
    start = time.monotonic()
    requested = False
    async with httpx.AsyncClient() as http:
        while time.monotonic() - start < timeout_s:
            try:
                if not requested:
                    r = await http.get(f"{training}/v1/examples", params={"project": MODEL}, headers=HEADERS, timeout=3)
                    if r.status_code == 200 and int(r.json().get("labelled", 0)) >= FIRST_MODEL_EXAMPLES:
                        r = await http.post(
                            f"{training}/v1/training-requests",
                            json={"model_name": MODEL, "reason": "initial"},
                            headers=HEADERS,
                            timeout=10,
                        )
                        requested = r.status_code < 300
                r = await http.get(f"{deployment}/v1/deployment", headers=HEADERS, timeout=3)
                if r.status_code == 200 and any(m["champion"] for m in r.json()["models"].values()):
                    return time.monotonic() - start
            except httpx.HTTPError:
                pass
            await asyncio.sleep(1)
    raise RuntimeError(f"no model served within {timeout_s} s")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    base = StackSettings()
    ns = await create_namespace(base, "chaos")
    procs = {s: ServiceProcess(f"driftline_{s}", ns) for s in SERVICES}
    # one event a second of event time, ending about now (ingestion refuses events from the future)
    begin = datetime.now(UTC) - timedelta(seconds=args.events + 600)
    stream = LoanStream(seed=args.seed, function=2, start=begin).schedule_concept_drift(at=args.events // 2, function=7)
    n_batches = args.events // 25
    load = Load(stream, args.label_delay, max(1, n_batches // args.malformed) if args.malformed else 0)
    out: dict[str, Any] = {"namespace": ns.name, "recovery_bar_s": args.recovery_bar_s}
    try:
        for name, proc in procs.items():
            proc.start(f"DRIFTLINE_{name.upper()}_")
        await asyncio.gather(*(p.wait_ready(timeout_s=240) for p in procs.values()))
        print(f"six services ready; {args.events} events at {args.rate}/s", flush=True)
        started = time.monotonic()
        async with (
            Publisher.http(procs["ingestion"].url, LOCAL_API_TOKEN, source="chaos", batch_size=500) as pub,
            httpx.AsyncClient() as http,
        ):
            loading = asyncio.create_task(load.run(pub, http, procs["ingestion"].url, args.events, args.rate))
            waited = await first_model(procs["training"].url, procs["deployment"].url, args.first_model_timeout_s)
            print(f"first model serving after {waited:.0f} s; chaos begins", flush=True)
            chaos = Chaos(ns, procs, args)
            await chaos.run()
            print("chaos done; waiting for the load to end", flush=True)
            await loading
        out["load_ended_at"] = load.ended_at
        out["load_s"] = round(time.monotonic() - started, 1)
        print(f"load done in {out['load_s']} s; waiting for no consumer lag", flush=True)
        settled_s, lag = await settle(ns.stack, args.settle_s)
        print(f"settled after {settled_s} s; lag left: {lag if settled_s is None else 'none'}", flush=True)
        out["settled_s"] = settled_s
        out["lag_left"] = {g: n for g, n in lag.items() if n}
        out["restarts"] = [r.__dict__ for r in chaos.restarts]
        out["outages"] = chaos.outages
        out["counts"] = await count(ns.stack, load)
    finally:
        for proc in procs.values():
            proc.stop()
        await drop_namespace(ns, base)
    return out


def render(out: dict[str, Any]) -> str:
    lines = [
        f"load {out['load_s']} s; settled (no lag) after {out['settled_s']} s; lag left: {out['lag_left'] or 'none'}"
    ]
    lines.append("")
    lines.append(
        f"{'service':<12} {'restarts':>8} {'ready s (median/max)':>22} {'working s (median/max)':>24} {'idle':>5}"
    )
    by: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in out["restarts"]:
        by[r["service"]].append(r)
    for name in SERVICES:
        rs = by.get(name, [])
        ready = [r["ready_s"] for r in rs if r["ready_s"] is not None]
        working = [r["working_s"] for r in rs if r["working_s"] is not None]

        def mm(xs: list[float]) -> str:
            return f"{statistics.median(xs):.1f} / {max(xs):.1f}" if xs else "-"

        if name in NO_STEADY_INPUT:
            lines.append(f"{name:<12} {len(rs):>8} {mm(ready):>22} {'n/a (no steady input)':>24} {'-':>5}")
        else:
            lines.append(f"{name:<12} {len(rs):>8} {mm(ready):>22} {mm(working):>24} {len(rs) - len(working):>5}")
    for component, o in (out.get("outages") or {}).items():
        lines.append("")
        lines.append(f"{component} down {o['down_s']} s; share of /readyz samples not ready during the outage:")
        lines.append("  " + ", ".join(f"{n} {v}" for n, v in o["not_ready_share"].items()))
        lines.append(
            f"  ready again after {component}'s start (s): "
            + ", ".join(f"{n} {v}" for n, v in o["ready_again_s"].items())
        )
    c = out["counts"]
    lines.append("")
    lines.append(
        f"accepted {c['accepted']} events, {c['labelled']} labels ({c['publish_retries']} publish retries); "
        f"malformed: {c['malformed']['sent']} sent, {c['malformed']['got_4xx']} got a 4xx, "
        f"{c['malformed']['in_dlq']} in events.dlq"
    )
    lines.append(f"{'place':<34} {'lost':>6} {'doubled':>8}")
    for place, v in c["sinks"].items():
        lines.append(f"{place:<34} {v['lost']:>6} {v['doubled']:>8}")
    return "\n".join(lines)


def verdict(out: dict[str, Any]) -> list[str]:
    problems = []
    c = out["counts"]
    for place, v in c["sinks"].items():
        if v["lost"] or v["doubled"]:
            problems.append(f"{place}: {v['lost']} lost, {v['doubled']} doubled")
    m = c["malformed"]
    if m["got_4xx"] < m["sent"] or m["in_dlq"] < m["sent"]:
        problems.append(
            f"malformed: {m['sent'] - m['got_4xx']} without a 4xx, {m['sent'] - m['in_dlq']} not in the DLQ"
        )
    if out["lag_left"]:
        problems.append(f"lag left: {out['lag_left']}")
    if c["accepted_later_dead_lettered"]:
        problems.append(f"{c['accepted_later_dead_lettered']} accepted events dead-lettered downstream")
    for r in out["restarts"]:
        took = r["ready_s"] if r["service"] in NO_STEADY_INPUT else r["working_s"]
        if took is None and r["ready_s"] is not None and r["at"] + out["recovery_bar_s"] > out["load_ended_at"]:
            continue  # restarted as the load ended: no input came to work on
        if took is None or took > out["recovery_bar_s"]:
            what = "ready" if r["service"] in NO_STEADY_INPUT else "working"
            problems.append(f"{r['service']} {what} again after {took} s of a restart (bar {out['recovery_bar_s']} s)")
    broker = (out.get("outages") or {}).get("kafka")
    if broker:
        ready = [n for n, share in broker["not_ready_share"].items() if share is not None and share < 0.5]
        if ready:
            problems.append(f"ready through most of the broker outage: {', '.join(ready)}")
    for component, o in (out.get("outages") or {}).items():
        if never := [n for n, t in o["ready_again_s"].items() if t is None]:
            problems.append(f"not ready again within 120 s of {component}'s start: {', '.join(never)}")
    return problems


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--events", type=int, default=30000, help="events posted over HTTP (default 30000)")
    p.add_argument("--rate", type=float, default=150.0, help="events per second (default 150)")
    p.add_argument("--label-delay", type=int, default=100, help="labels this many events behind (default 100)")
    p.add_argument("--kills", type=int, default=20, help="service SIGKILLs, round-robin (default 20)")
    p.add_argument(
        "--kill-services", default=",".join(SERVICES), help="the services to kill, round-robin (default: all six)"
    )
    p.add_argument("--kill-every", type=float, default=8.0, help="seconds between kills (default 8)")
    p.add_argument(
        "--outages",
        default="kafka,postgres,minio,apicurio",
        help="stack components taken down one after the other during the kills (default: all four)",
    )
    p.add_argument("--outage-s", type=float, default=15.0, help="seconds each is down; 0: none (default 15)")
    p.add_argument("--malformed", type=int, default=500, help="malformed requests spread over the load (default 500)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument(
        "--recovery-bar-s", type=float, default=10.0, help="a restart must be working again within this (default 10)"
    )
    p.add_argument("--settle-s", type=float, default=240.0, help="longest wait for no consumer lag (default 240)")
    p.add_argument("--first-model-timeout-s", type=float, default=300.0)
    p.add_argument("--json", type=Path, help="also write the figures as JSON")
    return p.parse_args(argv)


async def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = await run(args)
    print(render(out))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str))
    problems = verdict(out)
    for p in problems:
        print(f"PROBLEM: {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
