"""Training run vs a bare ``estimator.fit`` on the same data, in the same process and run.

The run goes through the service's own run function (``Runs.run``, wired by ``SERVICE.wire``): selection from
PostgreSQL, the time split, fit, holdout evaluation of the candidate and of the champion,
reference profiles, skops serialisation, the training-set file, and the uploads (model, training
set, metadata) to MinIO. The baseline fits the project's estimator on exactly the run's training split, in memory.

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

from driftline.events import derived_event_id, envelope  # noqa: E402
from driftline.records import FeatureVectorComputed, LabelRecorded, TrainingRequested  # noqa: E402
from driftline.runtime import Runtime  # noqa: E402
from driftline.service import wire_service  # noqa: E402
from driftline.settings import StackSettings  # noqa: E402
from driftline_ml.models import build_estimator  # noqa: E402
from driftline_training import pipeline  # noqa: E402
from driftline_training.api import TrainingDeps  # noqa: E402
from driftline_training.champion import Champion  # noqa: E402
from driftline_training.config import TrainingSettings  # noqa: E402
from driftline_training.requests import request_record  # noqa: E402
from driftline_training.service import SERVICE  # noqa: E402
from tests.support import create_namespace, drop_namespace  # noqa: E402


def synthetic_rows(n: int, names: list[str], seed: int = 0) -> tuple[list[FeatureVectorComputed], list[LabelRecorded]]:
    rng = np.random.default_rng(seed)
    start = datetime.now(UTC) - timedelta(days=1)
    vectors, labels = [], []
    for i in range(n):
        features: dict[str, Any] = {name: float(rng.uniform(0, 100)) for name in names}
        approve = features["loan"] < 2 * features["salary"] - 40 + rng.normal(0, 10)
        raw_id = f"bench-{i:06d}"
        t = start + timedelta(seconds=i)
        vector_env = envelope("bench", event_id=derived_event_id(raw_id, "1"), event_time=t)
        vectors.append(
            FeatureVectorComputed(
                **vector_env, source_event_id=raw_id, entity_id=f"c{i % 97}", feature_set_version="1", features=features
            )
        )
        label = "approve" if approve else "deny"
        label_env = envelope("bench", event_id=f"label-{raw_id}", event_time=t)
        labels.append(LabelRecorded(**label_env, labelled_event_id=raw_id, entity_id=f"c{i % 97}", label=label))
    return vectors, labels


def request(i: int, model_name: str, **parameters: str) -> TrainingRequested:
    return request_record(
        request_id=f"bench-request-{i}",
        model_name=model_name,
        reason="bench",
        requested_by="bench",
        parameters={"selection": "recent", **parameters},
        producer="bench",
    )


async def start(settings: TrainingSettings) -> tuple[Runtime, TrainingDeps]:
    """The service's runtime and objects, wired as in production, without starting its consumers."""
    rt, wiring = await wire_service(SERVICE, settings)
    return rt, wiring.deps


def fmt(seconds: float) -> str:
    return f"{seconds * 1000:8.1f} ms"


async def main(n_examples: int, repeat: int) -> None:
    base = StackSettings()
    ns = await create_namespace(base, label="bench")
    rt = None
    try:
        settings = TrainingSettings(stack=ns.stack)
        rt, deps = await start(settings)
        project = deps.project
        vectors, labels = synthetic_rows(n_examples, project.features.names)
        await deps.store.save_examples(vectors, labels)
        print(
            f"examples: {n_examples} labelled, max_examples {project.training.max_examples}, "
            f"estimator {project.model.estimator} {project.model.params}"
        )

        # Warm-up run (imports, first connections); it also becomes the champion, so the timed runs
        # include the champion's metadata and model downloads, SHA-256 checks, safe load and
        # evaluation on the holdout examples after its training data, as in production.
        # Not refitted: a refitted champion's training data ends where the holdout ends, and
        # would leave no holdout example to compare it on.
        first = await deps.runs.run(
            request(0, project.model.name, refit="false"), derived_event_id("run", "bench-warmup")
        )
        rec = first.record
        champion = Champion(
            model_name=project.model.name,
            version=1,
            run_id=rec.run_id,
            artifact_bucket=rec.artifact_bucket,
            artifact_key=rec.artifact_key,
            artifact_sha256=rec.artifact_sha256,
            feature_names=rec.feature_names,
            metadata_key=rec.metadata_key,
            metadata_sha256=rec.metadata_sha256,
        )
        await deps.store.set_champion(champion, promoted_event_id="bench", action="promote")

        run_times: list[float] = []
        fit_times: list[float] = []
        breakdowns: list[dict[str, float]] = []
        for i in range(1, repeat + 1):
            t0 = time.perf_counter()
            outcome = await deps.runs.run(request(i, project.model.name), derived_event_id("run", f"bench-{i}"))
            run_times.append(time.perf_counter() - t0)
            breakdowns.append(outcome.timings)
            assert outcome.record.champion_metrics is not None

            # Baseline: the bare fit on the very same training split, in memory.
            x = pipeline.feature_matrix(outcome.result.train, project.model_features)
            y = np.asarray([e.label for e in outcome.result.train])
            estimator = build_estimator(project.model, seed=project.training.seed)
            t0 = time.perf_counter()
            estimator.fit(x, y)
            fit_times.append(time.perf_counter() - t0)

        run_med, fit_med = statistics.median(run_times), statistics.median(fit_times)
        print(f"\nmedian of {repeat} (n_train {outcome.record.n_train}, n_holdout {outcome.record.n_holdout}):")
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
        print(f"\nartifact: {outcome.record.artifact_key} ({outcome.result.model_bytes.__len__()} bytes)")
    finally:
        if rt is not None:
            await rt.stop()
        await drop_namespace(ns, base)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.examples, args.repeat))
