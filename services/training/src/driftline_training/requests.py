"""Training requests: the TrainingRequested record and the ids that derive from a request id.

A request's event id and its run id both derive from the request id, so a re-sent request is a
duplicate downstream and a re-delivered one finds its run instead of fitting again.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from driftline.events import derived_event_id, envelope, epoch_ms
from driftline.records import TrainingRequested


def request_event_id_of(request_id: str) -> str:
    """Event id of the TrainingRequested record of a request."""
    return derived_event_id("training-request", request_id)


def run_id_of(request_id: str) -> str:
    return derived_event_id("run", request_id)


def trigger_of(request: TrainingRequested) -> str:
    """What a run records as its trigger: ``drift`` or ``request``."""
    return "drift" if request.reason == "drift" else "request"


# DriftDetected.reason of a refresh: a slow change's next run on the whole recent selection.
REFRESH = "refresh"


def is_refresh(request: TrainingRequested) -> bool:
    """A refresh: a drift episode's request without an onset (only a ``refresh`` attempt makes
    one), i.e. a run on the whole most recent selection: the champion's window on newer data.
    Derived from the request, so a request re-made after waiting for labels stays one."""
    return request.reason == "drift" and request.drift_episode_id is not None and request.since is None


def drift_request_id(model_name: str, episode_id: str, attempt: int | None = None, episode_attempt: int = 1) -> str:
    """The request a drift episode makes; ``episode_attempt`` numbers the episode's requests
    (``DriftDetected.attempt``), ``attempt`` a request made again after waiting for labels."""
    parts: tuple[object, ...] = (model_name, episode_id)
    if episode_attempt > 1:
        parts += (f"episode-attempt-{episode_attempt}",)
    if attempt is not None:
        parts += (attempt,)
    return derived_event_id("drift-request", *parts)


def initial_request_id(model_name: str, feature_set_version: str) -> str:
    return derived_event_id("initial-request", model_name, feature_set_version)


def request_record(
    *,
    request_id: str,
    model_name: str,
    reason: str,
    requested_by: str,
    producer: str,
    cause: object = None,
    drift_episode_id: str | None = None,
    since: datetime | None = None,
    parameters: Mapping[str, str] | None = None,
) -> TrainingRequested:
    """A TrainingRequested record; its event id derives from the request id (a re-send is a duplicate)."""
    return TrainingRequested(
        **envelope(producer, cause=cause, event_id=request_event_id_of(request_id)),
        request_id=request_id,
        model_name=model_name,
        reason=reason,
        requested_by=requested_by,
        drift_episode_id=drift_episode_id,
        since=epoch_ms(since) if since is not None else None,
        parameters=dict(parameters or {}),
    )
