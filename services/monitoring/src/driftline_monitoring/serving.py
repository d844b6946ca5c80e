"""Which promotion each model's monitor follows: the champion that *serves*, not merely the one
last promoted. Pure: no I/O; the handlers fetch references and build monitors on its decisions.

A promotion is only announced: deployment may refuse it (an artifact that fails its digest, a
model that does not load) and keep serving the previous champion. So a promotion after the one
followed is *pending* until it is seen serving. Two signals say so, and neither suffices alone:

* a ``deployments.status`` ``loaded``/``rolled_back`` of the champion slot caused by it (or, failing
  the cause, the latest promotion of its version). It is the only signal at start-up (predictions
  are not replayed), and the only one that can move the monitor *back*: a deployment instance
  that restarted and fell back to an earlier champion.
* a champion prediction of its version. It moves the monitor *forward* only (an older champion's
  predictions still in flight after a swap change nothing), and is the evidence when no status
  arrives: from a deployment that does not report, or before its status is read (the three data
  topics and deployments.status have no order between them).

A refused promotion (``failed``, or no evidence at all) changes nothing. The first promotion of a
model is followed at once (nothing else could be serving); a status read before its promotion is
kept and acted on when the promotion arrives.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from driftline.records import DeploymentStatusChanged, ModelPromoted
from driftline_monitoring.drift import BoundedMap

CHAMPION_ACTIONS = ("promote", "rollback")  # shadow promotions: the challenger is not monitored
SERVING = ("loaded", "rolled_back")  # deployments.status of a champion that now serves
KEPT_PROMOTIONS = 20  # per model: the promotions a status or a prediction can still point at


def is_champion(promotion: ModelPromoted) -> bool:
    return promotion.action in CHAMPION_ACTIONS


def is_serving(status: DeploymentStatusChanged) -> bool:
    return status.slot == "champion" and status.status in SERVING


class Switch(enum.Enum):
    """What following a promotion means for the model's monitor."""

    NONE = "none"  # already followed, or (forward only) the monitor moved past it meanwhile
    SAME_MODEL = "same_model"  # another promotion of the version monitored: keep its windows and episode
    NEW_MONITOR = "new_monitor"  # another version: new windows, the open episode closes


@dataclass
class Serving:
    """Per model: its recent champion promotions in order, the one its monitor follows, and a
    serving status read before its promotion."""

    promotions: dict[str, BoundedMap[ModelPromoted]] = field(default_factory=dict)
    followed: dict[str, ModelPromoted] = field(default_factory=dict)
    early_status: dict[str, DeploymentStatusChanged] = field(default_factory=dict)

    def remember(self, promotion: ModelPromoted) -> None:
        kept = self.promotions.setdefault(promotion.model_name, BoundedMap(KEPT_PROMOTIONS))
        kept.put(promotion.event_id, promotion)

    def follow(self, promotion: ModelPromoted) -> None:
        """The monitor of ``promotion.model_name`` now follows ``promotion``."""
        self.followed[promotion.model_name] = promotion

    def is_followed(self, promotion: ModelPromoted) -> bool:
        followed = self.followed.get(promotion.model_name)
        return followed is not None and followed.event_id == promotion.event_id

    def pending(self, name: str) -> list[ModelPromoted]:
        """The promotions of ``name`` after the one followed, oldest first (all of them when the
        followed one is no longer kept)."""
        promotions = list((self.promotions.get(name) or {}).values())
        ids = [p.event_id for p in promotions]
        followed = self.followed.get(name)
        return promotions[ids.index(followed.event_id) + 1 :] if followed and followed.event_id in ids else promotions

    def promotion_of(self, status: DeploymentStatusChanged) -> ModelPromoted | None:
        """The promotion a deployment status is about: its cause, else the latest of its version."""
        promotions: Mapping[str, ModelPromoted] = self.promotions.get(status.model_name) or {}
        if status.causation_id is not None and status.causation_id in promotions:
            return promotions[status.causation_id]
        same = [p for p in promotions.values() if p.version == status.version]
        return same[-1] if same else None

    # -- the decisions ----------------------------------------------------------------------------

    def at_start(self, history: Iterable[ModelPromoted | DeploymentStatusChanged]) -> list[ModelPromoted]:
        """The replayed history (remembered): per model, the promotion to follow: the one named by
        its latest serving status, or its latest promotion when deployment never reported."""
        statuses: dict[str, DeploymentStatusChanged] = {}
        for record in history:
            if isinstance(record, DeploymentStatusChanged):
                if is_serving(record):
                    statuses[record.model_name] = record
            elif is_champion(record):
                self.remember(record)
        out = []
        for name, promotions in self.promotions.items():
            status = statuses.get(name)
            serving = self.promotion_of(status) if status is not None else None
            out.append(serving or next(reversed(promotions.values())))
        return out

    def follows_at_once(self, promotion: ModelPromoted) -> bool:
        """A champion promotion just announced (and remembered) is followed at once when the model
        has no monitor yet, or when a serving status caused by it was read first."""
        name = promotion.model_name
        early = self.early_status.get(name)
        if name not in self.followed or (early is not None and early.causation_id == promotion.event_id):
            self.early_status.pop(name, None)
            return True
        return False

    def seen_serving(self, status: DeploymentStatusChanged) -> ModelPromoted | None:
        """The promotion a serving status of the champion slot shows serving, when it is not the
        one followed (None for any other status). A serving status read before its promotion is
        kept for :meth:`follows_at_once`."""
        if not is_serving(status):
            return None  # refused (failed), or another slot: nothing changes
        promotion = self.promotion_of(status)
        if promotion is None:  # two topics: its promotion is still to be read
            self.early_status[status.model_name] = status
            return None
        return None if self.is_followed(promotion) else promotion

    def seen_predicting(self, name: str, version: int) -> ModelPromoted | None:
        """The pending promotion a champion prediction of ``version`` shows serving (the latest of
        that version), or None: an older champion's, or a version never promoted."""
        pending = [p for p in self.pending(name) if p.version == version]
        return pending[-1] if pending else None

    def switch(self, promotion: ModelPromoted, *, forward_only: bool = False) -> Switch:
        """Follow ``promotion`` from now on; what it means for the monitor."""
        name = promotion.model_name
        current = self.followed.get(name)
        if self.is_followed(promotion):
            return Switch.NONE
        if forward_only and promotion.event_id not in {p.event_id for p in self.pending(name)}:
            return Switch.NONE  # meanwhile the monitor moved past it
        self.follow(promotion)
        if current is not None and current.version == promotion.version:
            return Switch.SAME_MODEL
        return Switch.NEW_MONITOR
