"""Deployment's decisions, as pure functions of promotions: which slot a promotion fills, what to
load at start-up (the latest champion, earlier ones to fall back on, the challenger beside the
champion that loaded), and what to announce on ``deployments.status`` after a load or a failure.

Challenger: a new champion empties the challenger slot, whether the challenger is the version
promoted or is superseded by another one (it was shadowing the champion it was meant to beat);
the emptied slot is announced as ``unloaded``. A later ``shadow`` or ``canary`` promotion fills it
again. A ``shadow`` challenger is scored but never served; a ``canary`` serves its
``traffic_fraction`` of the model's entities (:func:`driftline.canary.in_canary`) until a
``canary_rollback`` of its version empties the slot (announced as ``rolled_back``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from driftline.canary import check_fraction
from driftline.records import ModelPromoted

CHAMPION = "champion"
CHALLENGER = "challenger"
CANARY = "canary"  # the slot of a prediction served by a canary (the model sits in the challenger slot)
ACTIONS = ("promote", "rollback", "shadow", "canary", "canary_rollback")
CHALLENGER_ACTIONS = ("shadow", "canary", "canary_rollback")


def slot_for(action: str) -> str:
    """``shadow``, ``canary`` and ``canary_rollback`` are about the challenger slot; every other
    action (``promote``, ``rollback``) about the champion's."""
    return CHALLENGER if action in CHALLENGER_ACTIONS else CHAMPION


@dataclass(frozen=True)
class Announcement:
    """One ``deployments.status`` record to publish about a promotion."""

    slot: str
    status: str
    reason: str
    version: int
    load_seconds: float | None = None


def unknown_action(p: ModelPromoted) -> Announcement | None:
    """The refusal of a promotion whose action this service does not know (None: a known one)."""
    if p.action in ACTIONS:
        return None
    return Announcement(
        slot_for(p.action), "failed", f"unknown action {p.action!r} (expected one of {ACTIONS})", p.version
    )


def refused(p: ModelPromoted) -> Announcement | None:
    """The refusal of a promotion this service cannot carry out (None: it can): an unknown action,
    or a canary without a traffic fraction in (0, 1]."""
    refusal = unknown_action(p)
    if refusal is not None or p.action != "canary":
        return refusal
    if p.traffic_fraction is None:
        return Announcement(CHALLENGER, "failed", f"canary v{p.version} names no traffic_fraction", p.version)
    try:
        check_fraction(p.traffic_fraction)
    except ValueError as exc:
        return Announcement(CHALLENGER, "failed", f"canary v{p.version}: {exc}", p.version)
    return None


def load_failed(p: ModelPromoted, reason: str, seconds: float) -> Announcement:
    """The model of ``p`` cannot serve; the one serving keeps serving."""
    return Announcement(slot_for(p.action), "failed", reason, p.version, seconds)


def swapped(p: ModelPromoted, *, load_seconds: float, retired_version: int | None, startup: bool) -> list[Announcement]:
    """What to announce once the model of ``p`` serves: ``loaded`` (``rolled_back`` for a rollback),
    then the challenger its installation emptied (``retired_version``), if any, as ``unloaded``."""
    status = "rolled_back" if p.action == "rollback" else "loaded"
    why = "rebuilt from models.promoted at start-up; " if startup else ""
    fraction = p.traffic_fraction if p.action == "canary" else None
    share = f" serving {fraction * 100:g}% of the entities" if fraction is not None else ""
    announced = [
        Announcement(
            slot_for(p.action), status, f"{why}{p.action} v{p.version}{share}: {p.reason}", p.version, load_seconds
        )
    ]
    if retired_version is not None:
        became = "became the champion" if retired_version == p.version else "was superseded"
        announced.append(
            Announcement(
                CHALLENGER,
                "unloaded",
                f"challenger v{retired_version} {became}: {p.action} v{p.version} to champion",
                retired_version,
            )
        )
    return announced


def canary_rolled_back(p: ModelPromoted) -> Announcement:
    """What to announce once the canary that ``p`` (action ``canary_rollback``) withdraws has left
    the challenger slot: the champion serves every entity again."""
    reason = f"canary v{p.version} withdrawn, the champion serves every entity: {p.reason}"
    return Announcement(CHALLENGER, "rolled_back", reason, p.version)


@dataclass
class StartupPlan:
    """What to load for one model after replaying models.promoted: champions newest first, and
    the latest challenger (``shadow`` or ``canary``, unless a later ``canary_rollback`` withdrew
    it), which serves only beside a champion promoted before it."""

    champions: list[ModelPromoted] = field(default_factory=list)
    challenger: ModelPromoted | None = None
    order: dict[str, int] = field(default_factory=dict)  # event id → position in models.promoted

    def fallbacks(self, depth: int) -> list[ModelPromoted]:
        """The champions to try in turn, newest first, at most ``depth`` of them."""
        return self.champions[:depth]

    def challenger_beside(self, champion: ModelPromoted | None) -> ModelPromoted | None:
        """The challenger to load beside ``champion`` (the champion that loaded, None if none did):
        the same as live, where installing a champion empties the challenger slot."""
        challenger = self.challenger
        if challenger is None:
            return None
        if champion is None:
            return challenger
        if self.order[challenger.event_id] < self.order[champion.event_id]:
            return None  # superseded (or promoted) by this champion
        if challenger.version == champion.version:
            return None
        return challenger


def plan_from_history(history: Sequence[ModelPromoted], *, shadow: bool = True) -> dict[str, StartupPlan]:
    """The latest champion (with earlier ones to fall back on) and challenger of every model.

    As live: a refused promotion changes nothing, a ``canary_rollback`` empties the challenger
    slot only when it holds that version, and with ``shadow`` off (the service's setting)
    ``shadow`` promotions are ignored, while a canary (which serves traffic) still loads."""
    plans: dict[str, StartupPlan] = {}
    for position, p in enumerate(history):
        plan = plans.setdefault(p.model_name, StartupPlan())
        plan.order[p.event_id] = position
        if refused(p) is not None:
            continue
        if p.action == "canary" or (p.action == "shadow" and shadow):
            plan.challenger = p
        elif p.action == "canary_rollback":
            if plan.challenger is not None and plan.challenger.version == p.version:
                plan.challenger = None
        elif p.action in ("promote", "rollback"):
            plan.champions.append(p)
    for plan in plans.values():
        plan.champions.reverse()
    return plans
