"""Which promotion a model's monitor follows, decided on plain records (no I/O): the first
promotion at once, later ones only once seen serving; predictions move it forward only, a
serving status either way; a refused promotion changes nothing."""

from __future__ import annotations

from driftline.events import envelope
from driftline.records import DeploymentStatusChanged, ModelPromoted
from driftline_monitoring.serving import Serving, Switch

NAME = "m"


def promoted(version: int, action: str = "promote") -> ModelPromoted:
    return ModelPromoted(
        **envelope("test-registry"),
        model_name=NAME,
        version=version,
        run_id=f"run-{version}",
        artifact_bucket="b",
        artifact_key="a",
        artifact_sha256="x",
        metadata_key=f"meta-{version}",
        metadata_sha256="y",
        feature_names=("f",),
        action=action,
        reason="test",
        actor="test",
        metrics={},
    )


def status(p: ModelPromoted, state: str, *, slot: str = "champion", caused: bool = True) -> DeploymentStatusChanged:
    env = envelope("test-deployment", cause=p if caused else None)
    return DeploymentStatusChanged(
        **env, model_name=NAME, version=p.version, slot=slot, status=state, reason="test", instance_id="d-1"
    )


def announced(serving: Serving, p: ModelPromoted) -> bool:
    """As the handler does: remember, then follow at once if it is the decision."""
    serving.remember(p)
    return serving.follows_at_once(p) and serving.switch(p) is not Switch.NONE


def test_the_first_promotion_is_followed_at_once_and_later_ones_wait_until_seen_serving() -> None:
    serving, v1, v2 = Serving(), promoted(1), promoted(2)
    assert announced(serving, v1) and serving.followed[NAME] == v1
    assert not announced(serving, v2)
    assert serving.pending(NAME) == [v2]
    assert serving.seen_predicting(NAME, 2) == v2
    assert serving.switch(v2, forward_only=True) is Switch.NEW_MONITOR and serving.pending(NAME) == []


def test_predictions_move_the_monitor_forward_only_and_a_status_either_way() -> None:
    serving, v1, v2 = Serving(), promoted(1), promoted(2)
    announced(serving, v1)
    announced(serving, v2)
    serving.switch(v2, forward_only=True)
    assert serving.seen_predicting(NAME, 1) is None  # v1's predictions in flight after the swap
    assert serving.switch(v1, forward_only=True) is Switch.NONE
    # A deployment instance restarted on v1 says so: the monitor goes back.
    assert serving.seen_serving(status(v1, "loaded")) == v1
    assert serving.switch(v1) is Switch.NEW_MONITOR and serving.followed[NAME] == v1


def test_a_refused_promotion_stays_pending_and_a_repeat_of_the_version_keeps_the_monitor() -> None:
    serving, v1, v2 = Serving(), promoted(1), promoted(2)
    announced(serving, v1)
    announced(serving, v2)
    assert serving.seen_serving(status(v2, "failed")) is None
    assert serving.seen_serving(status(v2, "loaded", slot="challenger")) is None
    assert serving.followed[NAME] == v1 and serving.pending(NAME) == [v2]
    assert serving.seen_serving(status(v1, "loaded")) is None  # already followed
    again = promoted(1, action="rollback")  # v1 again: same model, same windows
    serving.remember(again)
    assert serving.switch(again) is Switch.SAME_MODEL and serving.followed[NAME] == again


def test_a_status_read_before_its_promotion_switches_when_the_promotion_arrives() -> None:
    serving, v1, v2 = Serving(), promoted(1), promoted(2)
    announced(serving, v1)
    assert serving.seen_serving(status(v2, "loaded")) is None  # v2 not read yet: kept
    assert announced(serving, v2) and serving.followed[NAME] == v2


def test_at_start_the_latest_serving_status_names_the_promotion_else_the_latest_promotion() -> None:
    v1, v2, v3 = promoted(1), promoted(2), promoted(3, action="rollback")
    shadow = promoted(4, action="shadow")
    history = [v1, status(v1, "loaded"), v2, status(v2, "loaded"), v3, status(v3, "failed"), shadow]
    assert Serving().at_start(history) == [v2]
    assert Serving().at_start([*history, status(v3, "rolled_back")]) == [v3]
    assert Serving().at_start([v1, v2, shadow]) == [v2]  # deployment never reported: the latest champion
    # A status without its cause names the latest promotion of its version.
    assert Serving().at_start([v1, v2, status(v1, "loaded", caused=False)]) == [v1]
