"""driftline trace reads shadow and canary verdicts too: models.compared is a chain topic, described with its
evidence, and what the registry did on a verdict reads as what it did."""

from __future__ import annotations

from driftline.catalog import MODELS_COMPARED, MODELS_PROMOTED
from driftline.events import Event, envelope
from driftline.history import CHAIN_TOPICS, chain, describe
from driftline.records import ChallengerCompared, ModelPromoted


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


def test_a_canary_verdict_and_what_the_registry_did_on_it_are_described() -> None:
    record = ChallengerCompared(
        **envelope("monitoring"),
        model_name="m",
        champion_version=1,
        challenger_version=3,
        verdict="champion_better",
        labelled_pairs=640,
        both_right=0,
        champion_only_right=0,
        challenger_only_right=0,
        both_wrong=0,
        champion_accuracy=0.95,
        challenger_accuracy=0.6,
        difference=-0.35,
        interval_low=-0.41,
        interval_high=-0.29,
        confidence=0.95,
        p_value=1.0,
        mode="canary",
        champion_labelled=330,
        champion_right=313,
        challenger_labelled=310,
        challenger_right=186,
        traffic_fraction=0.5,
    )
    text = describe(Event(MODELS_COMPARED, 0, 0, None, record.to_avro(), b"", 1, 0, record))
    assert "canary v3 (share 0.5) vs champion v1: champion_better" in text
    assert "0.6000 on 310 labelled events vs 0.9500 on 330" in text
    promoted = ModelPromoted(
        **envelope("registry"),
        model_name="m",
        version=3,
        run_id="r",
        artifact_bucket="b",
        artifact_key="k",
        artifact_sha256="0" * 64,
        metadata_key="mk",
        metadata_sha256="1" * 64,
        feature_names=("x",),
        previous_version=1,
        action="canary_rollback",
        reason="canary verdict champion_better",
        actor="policy:canary",
        metrics={},
    )
    text = describe(Event(MODELS_PROMOTED, 0, 0, None, promoted.to_avro(), b"", 1, 0, promoted))
    assert text.startswith("m v3 withdrawn as canary by policy:canary (was v1)")
