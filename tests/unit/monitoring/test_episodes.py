"""What an episode publishes and stores: the drift.detected record of a detection, and the stored
form a restart re-sends (the same event, timestamps included)."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta

from driftline.events import envelope
from driftline_monitoring.drift import PERFORMANCE, Detection, Evidence, Reference
from driftline_monitoring.episodes import drift_detected
from driftline_monitoring.store import record_from_json, record_json


def test_a_detection_becomes_one_drift_record_that_survives_the_stored_form() -> None:
    reference = Reference("m", 3, {}, None, 0.9, "approve", "promotion-1")
    evidence = [
        Evidence(None, "accuracy_drop", 0.2, 0.12, None, True),
        Evidence(None, "page_hinkley", float("inf"), 25.0, None, False),
    ]
    detection = Detection(PERFORMANCE, "accuracy_drop", 0.2, 0.12, [], evidence, 1_000, 61_000, 600, 30_000)
    env = envelope("monitoring", event_id="e-1", correlation_id="e-1")
    record = drift_detected(env, "episode-1", reference, detection)
    assert (record.model_name, record.model_version, record.episode_id) == ("m", 3, "episode-1")
    assert record.window_start.timestamp() == 1.0 and record.window_end.timestamp() == 61.0
    assert record.onset is not None and record.onset.timestamp() == 30.0
    assert record.evidence[1].statistic == 0.0  # not finite: Avro doubles are, JSON's are not
    stored = json.loads(record_json(record))
    assert stored["window_start"] == 1_000 and stored["event_id"] == "e-1"  # epoch millis, as ever
    restored = record_from_json(stored)
    assert replace(restored, event_time=record.event_time, produced_at=record.produced_at) == record
    ms = timedelta(milliseconds=1)  # the precision of Avro's timestamp-millis too
    assert abs(restored.event_time - record.event_time) < ms and abs(restored.produced_at - record.produced_at) < ms
