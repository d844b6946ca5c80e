"""bench/loop_driftline.py: the platform's decision code as a policy of the loop benchmark."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest

from bench import loop
from bench.streams import make_stream

N = 5000


def _run(kind: str) -> tuple[loop.Run, dict[str, Any]]:
    from driftline_ml.models import build_estimator

    stream = make_stream("loan", kind, 1, N)
    classes = tuple(sorted(set(stream.labels), key=str))
    code = {c: k for k, c in enumerate(classes)}
    y = np.asarray([code[v] for v in stream.labels], dtype=np.int64)
    info = loop.StreamInfo("loan", kind, 1, N, tuple(stream.feature_names), classes, tuple(stream.drifts))
    config = loop.LoopConfig(label_delay=100, window=1500)
    spec = loop.ModelSpec(
        name="bench", estimator="sklearn.ensemble.HistGradientBoostingClassifier", params={"max_iter": 50}
    )
    policy = loop.POLICIES["driftline"](loop.Trainer(lambda: build_estimator(spec, seed=7)))
    run = loop.simulate(stream.matrix(), y, info, policy, config)
    return run, loop.metrics(run, y, info, config)


SLOW = pytest.mark.skipif(not os.environ.get("BENCH_SLOW"), reason="about 45 s on 2 cores: set BENCH_SLOW=1")


@pytest.mark.parametrize("kind", [pytest.param("sudden", marks=SLOW), "stationary"])
def test_driftline_detects_a_sudden_loan_drift_and_raises_no_alarm_on_a_stationary_stream(kind: str) -> None:
    run, m = _run(kind)
    assert run.runs and run.runs[0]["served"]  # the first model
    if kind == "sudden":
        assert m["missed"] == 0 and m["false_alarms"] == 0
        assert m["delays"][0] is not None and m["delays"][0] < 1000
        assert len(run.runs) >= 2  # the drift's run
    else:
        assert m["alarms"] == 0 and m["retrains"] == 0
