"""driftline trace reads shadow verdicts too: models.compared is a chain topic, described with its evidence."""

from __future__ import annotations

from driftline.catalog import MODELS_COMPARED
from driftline.events import Event, envelope
from driftline.history import CHAIN_TOPICS, chain, describe
from driftline.records import ChallengerCompared


def test_a_verdict_is_in_its_chain_and_described_with_its_evidence() -> None:
    record = ChallengerCompared(
        **envelope("monitoring"),
        model_name="m",
        champion_version=1,
        challenger_version=2,
        verdict="challenger_better",
        labelled_pairs=260,
        both_right=150,
        champion_only_right=10,
        challenger_only_right=60,
        both_wrong=40,
        champion_accuracy=160 / 260,
        challenger_accuracy=210 / 260,
        difference=50 / 260,
        interval_low=0.12,
        interval_high=0.26,
        confidence=0.95,
        p_value=1e-9,
    )
    event = Event(MODELS_COMPARED, 0, 0, None, record.to_avro(), b"", 1, 0, record)
    assert MODELS_COMPARED in CHAIN_TOPICS
    assert chain([event], record.correlation_id) == [event]
    text = describe(event)
    assert "challenger v2 vs champion v1: challenger_better on 260 labelled events" in text
    assert "[+0.1200, +0.2600]" in text
