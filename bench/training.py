"""Training run vs a bare ``estimator.fit`` on the same data, in the same process and run.

The run goes through the service's own run function (``TrainingHandlers.run``): selection from
PostgreSQL, the time split, fit, holdout evaluation of the candidate and of the champion,
reference profiles, skops serialisation, and both uploads (model + metadata) to MinIO. The
baseline fits the project's estimator on exactly the run's training split, in memory.

Needs a running stack (an isolated namespace is created on it and dropped afterwards)::

    DRIFTLINE_STATE_DIR=.state/test .venv/bin/python bench/training.py --examples 3000 --repeat 5
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from driftline.events import Event, derived_event_id  # noqa: E402
from driftline.settings import StackSettings  # noqa: E402
from driftline_ml.models import build_estimator  # noqa: E402
from driftline_training import pipeline  # noqa: E402
from driftline_training.bootstrap import start  # noqa: E402
from driftline_training.config import TrainingSettings  # noqa: E402
from driftline_training.handlers import request_record  # noqa: E402
from driftline_training.store import Champion, LabelRow, VectorRow  # noqa: E402
from tests.support import create_namespace, drop_namespace  # noqa: E402


def synthetic_rows(n: int, names: list[str], seed: int = 0) -> tuple[list[VectorRow], list[LabelRow]]:
    rng = np.random.default_rng(seed)
    start = datetime.now(UTC) - timedelta(days=1)
    vectors, labels = [], []
    for i in range(n):
        features: dict[str, Any] = {name: float(rng.uniform(0, 100)) for name in names}
        approve = features["loan"] < 2 * features["salary"] - 40 + rng.normal(0, 10)
        raw_id = f"bench-{i:06d}"
        t = start + timedelta(seconds=i)
        vectors.append(VectorRow(raw_id, "1", derived_event_id(raw_id, "1"), f"c{i % 97}", t, features))
        labels.append(LabelRow(raw_id, "approve" if approve else "deny", f"label-{raw_id}", f"c{i % 97}", t))
    return vectors, labels


def request_event(i: int, model_name: str) -> Event:
    record = request_record(
        request_id=f"bench-request-{i}",
        model_name=model_name,
        reason="bench",
        requested_by="bench",
        parameters={"selection": "recent"},
    )
    return Event("training.requested", 0, i, None, record, b"", 0, 0)


def fmt(seconds: float) -> str:
    return f"{seconds * 1000:8.1f} ms"


async def main(n_examples: int, repeat: int) -> None:
    base = StackSettings()
    ns = await create_namespace(base, label="bench")
    service = None
    try:
        settings = TrainingSettings(stack=ns.stack)
        service = await start(settings, consumers=False)
        h = service.handlers
        project = h.project
        vectors, labels = synthetic_rows(n_examples, project.features.names)
        await service.store.save_examples(vectors, labels)
        print(
            f"examples: {n_examples} labelled, max_examples {project.training.max_examples}, "
            f"estimator {project.model.estimator} {project.model.params}"
        )

        # Warm-up run (imports, first connections); it also becomes the champion, so the timed runs
        # include the champion's metadata and model downloads, SHA-256 checks, safe load and
        # evaluation on the holdout examples after its training data, as in production.
        first = await h.run(request_event(0, project.model.name), derived_event_id("run", "bench-warmup"))
        rec = first.record
        await service.store.set_champion(
            Champion(project.model.name, 1, rec["run_id"], rec["artifact_bucket"], rec["artifact_key"],
                     rec["artifact_sha256"], rec["feature_names"], rec["metadata_key"], rec["metadata_sha256"]),
            promoted_event_id="bench", action="promote",
        )  # fmt: skip

        run_times: list[float] = []
        fit_times: list[float] = []
        breakdowns: list[dict[str, float]] = []
        for i in range(1, repeat + 1):
            t0 = time.perf_counter()
            outcome = await h.run(request_event(i, project.model.name), derived_event_id("run", f"bench-{i}"))
            run_times.append(time.perf_counter() - t0)
            breakdowns.append(outcome.timings)
            assert outcome.record["champion_metrics"] is not None

            # Baseline: the bare fit on the very same training split, in memory.
            x = pipeline.feature_matrix(outcome.result.train, project.model_features)
            y = np.asarray([e.label for e in outcome.result.train])
            estimator = build_estimator(project.model, seed=project.training.seed)
            t0 = time.perf_counter()
            estimator.fit(x, y)
            fit_times.append(time.perf_counter() - t0)

        run_med, fit_med = statistics.median(run_times), statistics.median(fit_times)
        print(f"\nmedian of {repeat} (n_train {outcome.record['n_train']}, n_holdout {outcome.record['n_holdout']}):")
        print(f"  training run (service run function) {fmt(run_med)}")
        print(f"  bare estimator.fit                   {fmt(fit_med)}")
        print(f"  ratio run / bare fit                 {run_med / fit_med:8.2f}x")
        inner_fit = statistics.median(b["fit_s"] for b in breakdowns)
        outside = statistics.median(r - b["fit_s"] for r, b in zip(run_times, breakdowns, strict=True))
        print(f"  fit inside the run (off the loop)    {fmt(inner_fit)}")
        print(f"  run time outside its own fit         {fmt(outside)}")
        print("\nrun breakdown (medians):")
        for key in breakdowns[0]:
            print(f"  {key:<12} {fmt(statistics.median(b[key] for b in breakdowns))}")
        print(f"\nartifact: {outcome.record['artifact_key']} ({outcome.result.model_bytes.__len__()} bytes)")
    finally:
        if service is not None:
            await service.stop()
        await drop_namespace(ns, base)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.examples, args.repeat))
