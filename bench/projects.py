"""Many projects on one install: per-event cost and memory of each service at 1, 10 and 50 projects.

For each project count N, on a fresh namespace of the running stack, the six services are started
as real processes; N generated projects (three shapes: windowed sensor features, plain raw fields,
derived expressions with a count window; each its own event type, payload schema, model) are on
the projects topic: the first as the services' ``DRIFTLINE_PROJECT_FILE``, the others applied at
run time with ``driftline.project_topic.apply_definition`` (what ``driftline projects apply`` calls).
Each project has its own seeded stream of readings, posted over HTTP with labels 40 readings
behind, and ``training.initial_training_after`` trains its first model by itself.

1. warm-up: ``--warm-events`` readings at ``--warm-rate`` (the same for every count, so memory
   that grows with the data is compared like for like), then none until every project's first
   model serves (``deployments.status`` loaded; the time from its apply to that is reported,
   median and max) and no training run is in progress;
2. measurement: ``--seconds`` at the same total rate ``--rate`` for every N (split evenly over the
   projects): CPU seconds of each service's process tree (``/proc``: utime + stime) per event
   accepted, events/s in and scored, and each service's resident memory (RSS of its process tree)
   at the end;
3. with ``--drift-projects`` (default 10) projects: project 1's stream switches concept; the run
   waits until its model is retrained and serves a new version, and checks that no other model
   got a drift event, a drift-triggered request or a new version.

The baseline is the 1-project run of the same invocation: the table prints each N's per-event cost
as a ratio of it, and the resident memory per added project summed over the services. Goal: cost at
50 projects within 1.2x of 1 project, memory per added project under 30 MB.

    DRIFTLINE_STATE_DIR=.state/test .venv/bin/python bench/projects.py [--counts 1,10,50] [--rate 150]
        [--seconds 40] [--warm-rate 250] [--warm-events 18000] [--drift-projects 10] [--json PATH]

or ``make bench-projects`` (about 10 minutes, on the test stack).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import yaml  # noqa: E402

from driftline.catalog import DEPLOYMENTS_STATUS, DRIFT_DETECTED, MODELS_PROMOTED, TRAINING_REQUESTED  # noqa: E402
from driftline.history import read_topics  # noqa: E402
from driftline.project_topic import apply_definition  # noqa: E402
from driftline.projects import Definition  # noqa: E402
from driftline.settings import LOCAL_API_TOKEN, StackSettings  # noqa: E402
from driftline_cli.examples.machine_health.stream import MachineStream, Reading  # noqa: E402
from driftline_sdk import Publisher  # noqa: E402
from tests.support import Namespace, ServiceProcess, create_namespace, drop_namespace  # noqa: E402

SERVICES = ("ingestion", "features", "training", "registry", "deployment", "monitoring")
TEMPLATE = ROOT / "examples" / "machine_health"
LABEL_DELAY = 40
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


# -- generated projects -------------------------------------------------------------------------------


def project_doc(i: int) -> dict[str, Any]:
    """Project ``i``: the machine-health file renamed, in one of three feature shapes."""
    doc = yaml.safe_load((TEMPLATE / "project.yaml").read_text())
    doc["name"] = f"p{i:03d}"
    doc["event"] = {"type": f"reading_{i:03d}", "schema": f"Reading{i:03d}", "entity_key": "machine_id"}
    doc["model"]["name"] = f"m{i:03d}"
    doc["training"]["initial_training_after"] = 300
    doc["training"]["min_examples"] = 200
    shape = i % 3
    if shape == 1:  # plain: raw fields only
        doc["features"].update(derived=[], windows=[])
    elif shape == 2:  # derived expressions and one count window
        doc["features"]["derived"] = [
            {"name": "load", "expr": "pressure * rpm / 1000"},
            {"name": "heat_per_rev", "expr": "temperature / (rpm + 1)"},
            {"name": "shake", "expr": "vibration * vibration"},
        ]
        doc["features"]["windows"] = [
            {
                "name": "readings_30m",
                "field": "vibration",
                "agg": "count",
                "window": {"type": "hopping", "size": "30m", "step": "10m", "lateness": "2m"},
            }
        ]
    return doc


def write_project(folder: Path, i: int) -> Path:
    schema = json.loads((TEMPLATE / "MachineReading.avsc").read_text())
    schema["name"] = f"Reading{i:03d}"
    (folder / f"Reading{i:03d}.avsc").write_text(json.dumps(schema))
    path = folder / f"p{i:03d}.yaml"
    path.write_text(yaml.safe_dump(project_doc(i), sort_keys=False))
    return path


def event_of(i: int, r: Reading) -> dict[str, Any]:
    return {**r.event, "type": f"reading_{i:03d}"}


# -- processes ----------------------------------------------------------------------------------------


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                children = Path(f"/proc/{p}/task/{tid}/children").read_text().split()
                todo += [int(c) for c in children]
        except OSError:
            continue
    return out


def cpu_seconds(pid: int) -> float:
    total = 0
    for p in _tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLOCK_TICKS


def rss_mb(pid: int) -> float:
    total = 0
    for p in _tree(pid):
        try:
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1])
        except OSError:
            continue
    return total * PAGE / 2**20


# -- one project count --------------------------------------------------------------------------------


@dataclass
class Feeds:
    streams: dict[int, MachineStream]
    pending: dict[int, list[Reading]] = field(default_factory=dict)
    sent: int = 0

    async def publish(self, pub: Publisher, n: int) -> None:
        """``n`` readings spread round-robin over the projects, with their due labels."""
        ids = list(self.streams)
        events, labels = [], []
        for k in range(n):
            i = ids[(self.sent + k) % len(ids)]
            r = self.streams[i].next()
            events.append(event_of(i, r))
            queue = self.pending.setdefault(i, [])
            queue.append(r)
            if len(queue) > LABEL_DELAY:
                labels.append(queue.pop(0).label_record())
        result = await pub.publish(events)
        if result.rejected:
            raise RuntimeError(f"ingestion refused generated readings: {result.errors[:3]}")
        if labels:
            await pub.publish_labels(labels)
        self.sent += n

    async def flush_labels(self, pub: Publisher) -> None:
        labels = [r.label_record() for queue in self.pending.values() for r in queue]
        self.pending = {}
        if labels:
            await pub.publish_labels(labels)

    async def run(self, pub: Publisher, rate: float, seconds: float, until: Any = None) -> int:
        start, sent0, batch = time.monotonic(), self.sent, 50
        while time.monotonic() - start < seconds and not (until and until()):
            t = time.monotonic()
            await self.publish(pub, batch)
            await asyncio.sleep(max(0.0, batch / rate - (time.monotonic() - t)))
        return self.sent - sent0


async def loaded_models(stack: StackSettings) -> dict[str, float]:
    """Model → produced_at (epoch s) of its first champion ``loaded`` status."""
    first: dict[str, float] = {}
    for e in await read_topics(stack, [DEPLOYMENTS_STATUS]):
        v = e.value
        if v["status"] == "loaded" and v["slot"] == "champion":
            first.setdefault(v["model_name"], v["produced_at"].timestamp())
    return first


async def run_count(base: StackSettings, n: int, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    ns: Namespace = await create_namespace(base, f"bp{n}")
    paths = [write_project(folder, i) for i in range(n)]
    env = {"DRIFTLINE_PROJECT_FILE": str(paths[0]), "DRIFTLINE_API_TOKENS": ""}
    procs = {s: ServiceProcess(f"driftline_{s}", ns, env=env) for s in SERVICES}
    out: dict[str, Any] = {"projects": n}
    try:
        started = time.time()
        for name, proc in procs.items():
            proc.start(f"DRIFTLINE_{name.upper()}_")
        await asyncio.gather(*(p.wait_ready(timeout_s=240) for p in procs.values()))
        applied_at = {0: started}
        for i, path in enumerate(paths[1:], start=1):
            await apply_definition(ns.stack, Definition.from_file(path), applied_by="bench", producer="bench")
            applied_at[i] = time.time()
        await asyncio.sleep(2)  # every service follows the topic: give the last apply a moment
        feeds = Feeds({i: MachineStream(seed=100 + i) for i in range(n)})
        ingestion = procs["ingestion"].url
        async with Publisher.http(ingestion, LOCAL_API_TOKEN, source="bench", batch_size=500) as pub:
            # 1. warm-up: the same number of readings for every count (memory that grows with the
            # data, joins and idempotency keys, is compared like for like), then no more until
            # every project's first model serves and training is idle.
            await feeds.run(pub, args.warm_rate, 1e9, until=lambda: feeds.sent >= args.warm_events)
            await feeds.flush_labels(pub)
            deadline = time.monotonic() + args.warm_timeout
            served: dict[str, float] = {}
            while len(served) < n and time.monotonic() < deadline:
                await asyncio.sleep(3)
                served = await loaded_models(ns.stack)
            await training_idle(procs["training"].url, deadline)
            first_model_s = [served[f"m{i:03d}"] - applied_at[i] for i in range(n) if f"m{i:03d}" in served]
            out["warm_events"] = feeds.sent
            out["first_model_s"] = {
                "served": len(first_model_s),
                "median": round(statistics.median(first_model_s), 1) if first_model_s else None,
                "max": round(max(first_model_s), 1) if first_model_s else None,
            }
            # 2. measurement at the common rate
            await feeds.run(pub, args.rate, 5)  # settle at the rate
            cpu0 = {s: cpu_seconds(p.proc.pid) for s, p in procs.items() if p.proc}
            t0 = time.monotonic()
            scored0 = await scored(procs["deployment"].url)
            sent = await feeds.run(pub, args.rate, args.seconds)
            await asyncio.sleep(2)  # the tail of the pipeline
            elapsed = time.monotonic() - t0
            cpu1 = {s: cpu_seconds(p.proc.pid) for s, p in procs.items() if p.proc}
            scored1 = await scored(procs["deployment"].url)
            out["events"] = sent
            out["events_per_s"] = round(sent / (elapsed - 2), 1)
            out["scored_per_s"] = round((scored1 - scored0) / (elapsed - 2), 1)
            out["cpu_ms_per_event"] = {s: round(1000 * (cpu1[s] - cpu0[s]) / max(1, sent), 3) for s in cpu0}
            out["rss_mb"] = {s: round(rss_mb(p.proc.pid), 1) for s, p in procs.items() if p.proc}
            # 3. a drift in one project
            if n == args.drift_projects and n >= 2:
                out["drift"] = await drift_one(ns.stack, feeds, pub, args)
    finally:
        for proc in procs.values():
            proc.stop()
        await drop_namespace(ns, base)
    return out


async def training_idle(training_url: str, deadline: float) -> None:
    """Until no run is in progress (or the deadline)."""
    async with httpx.AsyncClient(timeout=10) as http:
        while time.monotonic() < deadline:
            running = (await http.get(f"{training_url}/v1/runs", params={"status": "running"})).json()["runs"]
            if not running:
                return
            await asyncio.sleep(2)


async def scored(deployment_url: str) -> float:
    """Stream predictions made so far (deployment's metrics)."""
    async with httpx.AsyncClient(timeout=10) as http:
        text = (await http.get(f"{deployment_url}/metrics")).text
    total = 0.0
    for line in text.splitlines():
        if (
            line.startswith("driftline_deployment_predictions_total{")
            and 'source="stream"' in line
            and 'slot="champion"' in line
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def drift_one(stack: StackSettings, feeds: Feeds, pub: Publisher, args: argparse.Namespace) -> dict[str, Any]:
    before = await read_topics(stack, [MODELS_PROMOTED])
    versions_before = {e.value["model_name"]: e.value["version"] for e in before}
    feeds.streams[1].drift()
    started = time.monotonic()
    new_version = None
    while time.monotonic() - started < args.drift_timeout:
        await feeds.run(pub, args.warm_rate, 5)
        promoted = [e.value for e in await read_topics(stack, [MODELS_PROMOTED]) if e.value["model_name"] == "m001"]
        if promoted and promoted[-1]["version"] > versions_before.get("m001", 0) and promoted[-1]["drift_episode_id"]:
            new_version = promoted[-1]["version"]
            break
    records = await read_topics(stack, [DRIFT_DETECTED, TRAINING_REQUESTED, MODELS_PROMOTED])
    drifted = sorted({e.value["model_name"] for e in records if e.topic == DRIFT_DETECTED})
    drift_requests = sorted(
        {e.value["model_name"] for e in records if e.topic == TRAINING_REQUESTED and e.value["reason"] == "drift"}
    )
    versions_after = {e.value["model_name"]: e.value["version"] for e in records if e.topic == MODELS_PROMOTED}
    changed = sorted(m for m, v in versions_after.items() if v != versions_before.get(m))
    return {
        "retrained": new_version is not None,
        "seconds": round(time.monotonic() - started, 1),
        "drift_detected_for": drifted,
        "drift_requests_for": drift_requests,
        "new_versions_for": changed,
        "others_untouched": drifted == ["m001"] and drift_requests == ["m001"] and changed == ["m001"],
    }


# -- the report ---------------------------------------------------------------------------------------


def render(results: list[dict[str, Any]]) -> str:
    base = results[0]
    lines = [
        "| projects | events/s in | scored/s | " + " | ".join(f"{s} ms/ev" for s in SERVICES) + " | total ms/ev | "
        "x 1 project | RSS MB (sum) | first model s (median / max) |",
        "|" + "---|" * (9 + len(SERVICES) - 3),
    ]
    base_total = sum(base["cpu_ms_per_event"].values())
    for r in results:
        total = sum(r["cpu_ms_per_event"].values())
        fm = r["first_model_s"]
        lines.append(
            f"| {r['projects']} | {r['events_per_s']} | {r['scored_per_s']} | "
            + " | ".join(f"{r['cpu_ms_per_event'][s]:.3f}" for s in SERVICES)
            + f" | {total:.3f} | {total / base_total:.2f} | {sum(r['rss_mb'].values()):.0f} | "
            f"{fm['median']} / {fm['max']} ({fm['served']}/{r['projects']}) |"
        )
    lines.append("")
    lines.append("Resident memory per service (MB), and per added project over the 1-project run:")
    lines.append("| projects | " + " | ".join(SERVICES) + " | sum | MB per added project (sum) |")
    lines.append("|" + "---|" * (len(SERVICES) + 3))
    for r in results:
        added = r["projects"] - base["projects"]
        per = (sum(r["rss_mb"].values()) - sum(base["rss_mb"].values())) / added if added else None
        lines.append(
            f"| {r['projects']} | "
            + " | ".join(f"{r['rss_mb'][s]:.0f}" for s in SERVICES)
            + f" | {sum(r['rss_mb'].values()):.0f} | {'-' if per is None else f'{per:.1f}'} |"
        )
    for r in results:
        if "drift" in r:
            d = r["drift"]
            lines.append("")
            lines.append(
                f"Drift in project p001 of {r['projects']}: retrained={d['retrained']} in {d['seconds']} s; "
                f"drift.detected for {d['drift_detected_for']}, drift requests for {d['drift_requests_for']}, "
                f"new versions for {d['new_versions_for']}: others untouched = {d['others_untouched']}"
            )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--counts", default="1,10,50", help="Project counts, comma-separated (the first is the baseline).")
    p.add_argument("--rate", type=float, default=150.0, help="Total readings per second while measuring.")
    p.add_argument("--seconds", type=float, default=40.0, help="Measurement length.")
    p.add_argument("--warm-rate", type=float, default=250.0, help="Readings per second of the warm-up.")
    p.add_argument("--warm-timeout", type=float, default=900.0, help="At most this long for the first models.")
    p.add_argument(
        "--warm-events",
        type=int,
        default=18000,
        help="Readings of the warm-up, whatever the count (>= 340 per project: 300 labelled, 40 pending).",
    )
    p.add_argument("--drift-projects", type=int, default=10, help="The project count whose run also drifts one.")
    p.add_argument("--drift-timeout", type=float, default=240.0)
    p.add_argument("--json", type=Path, help="Also write the results here.")
    return p.parse_args(argv)


async def main(argv: list[str] | None = None) -> None:
    import tempfile

    args = parse_args(argv)
    base = StackSettings()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in [int(c) for c in args.counts.split(",")]:
            folder = Path(tmp) / f"n{n}"
            folder.mkdir()
            print(f"== {n} projects", flush=True)
            r = await run_count(base, n, args, folder)
            print(json.dumps(r), flush=True)
            results.append(r)
    print(render(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
