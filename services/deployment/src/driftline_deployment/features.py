"""The features of a raw event sent to ``POST /v1/predict``, computed as the stream computes them.

The event is validated by the same :class:`~driftline.validation.Validator` as ingestion's (the
project's payload schema; the same envelope defaults: a new event id, event time now), its raw
and derived features and windowed aggregates come from
:meth:`driftline_ml.online.ProjectFeatures.compute` (the code of the features service), with its
entity's window state read from the online store (``features.entity_windows``, written by the
features service with each durable batch). Nothing is written: the event joins its entity's
windows only if it is also sent to ingestion.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from driftline.projects import Applied
from driftline.records import RawEvent
from driftline.validation import Rejection, Valid, Validator
from driftline_deployment.metrics import RAW_EVENT_SECONDS
from driftline_ml.featuredefs import FeatureValue
from driftline_ml.online import FeatureSets, ProjectFeatures

StateReader = Callable[[Sequence[str]], Awaitable[Mapping[str, dict[str, Any]]]]


class InvalidEvents(ValueError):
    """Events the project's schema refuses: the errors by index, as ingestion reports them."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(f"{len(errors)} problem(s) in the events")
        self.errors = errors


@dataclass(frozen=True, slots=True)
class ServedEvent:
    """A request's raw event and its vector."""

    raw: RawEvent
    project: str | None
    features: dict[str, FeatureValue]
    late: bool


class RawEventFeatures:
    """Validates raw events and computes their vectors; follows the projects topic (:meth:`update`)."""

    def __init__(self, read_states: StateReader) -> None:
        self.read_states = read_states
        self.sets = FeatureSets()
        self.validator = Validator({}, [])
        self.models: dict[str, str] = {}  # event type → its project's model

    def update(self, projects: Sequence[Applied]) -> None:
        self.sets.update(projects)
        self.validator = Validator.merged([a.definition.validator() for a in projects])
        self.models = {a.project.event.type: a.project.model.name for a in projects}

    def model_of(self, item: Any) -> str | None:
        """The model of an event's project (by its ``type``), if the type is known."""
        etype = item.get("type") if isinstance(item, dict) else None
        return self.models.get(etype) if isinstance(etype, str) else None

    async def compute(self, items: Sequence[Any]) -> list[ServedEvent]:
        """The vectors of ``items`` (request bodies' events), in order; InvalidEvents if any is refused."""
        start = time.perf_counter()
        checked = [
            self.validator.event(item, i, producer="deployment", source="predict") for i, item in enumerate(items)
        ]
        rejected = [c for c in checked if isinstance(c, Rejection)]
        if rejected:
            raise InvalidEvents([e for r in rejected for e in r.errors()])
        planned: list[tuple[RawEvent, ProjectFeatures]] = []
        for c in checked:
            assert isinstance(c, Valid)
            raw = RawEvent.from_avro(c.record)
            pf = self.sets.of(raw)
            if pf is None:  # validated, so only between two updates of the projects topic
                raise InvalidEvents([{"index": c.index, "field": "type", "error_type": "unknown_event_type",
                                      "reason": f"{raw.event_type!r} has no feature set here yet"}])  # fmt: skip
            planned.append((raw, pf))
        keys = [pf.state_key(raw.entity_id) for raw, pf in planned if pf.features.stateful]
        states = await self.read_states(keys) if keys else {}
        out = []
        for raw, pf in planned:
            vector = pf.compute(raw, states.get(pf.state_key(raw.entity_id)))
            out.append(ServedEvent(raw, pf.project, vector.features, vector.late))
        RAW_EVENT_SECONDS.observe(time.perf_counter() - start)
        return out
