"""The canary's traffic split: which entities a canary serves, the same answer in every process.

An entity's share is a number in [0, 1) derived from a SHA-256 of the model name and the entity
id, so a given entity is always on the same side of the split (its events, its HTTP requests, on
every deployment instance, after every restart), and raising the fraction only adds entities to
the canary's side. The model name is part of the hash so that two models' canaries do not take
the same entities.
"""

from __future__ import annotations

import hashlib

_SCALE = float(2**64)


def entity_share(model_name: str, entity_id: str) -> float:
    """The entity's place in [0, 1) for ``model_name``'s canary split."""
    digest = hashlib.sha256(f"{model_name}\x00{entity_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE


def in_canary(model_name: str, entity_id: str, fraction: float | None) -> bool:
    """Whether a canary serving ``fraction`` of ``model_name``'s entities serves ``entity_id``."""
    return fraction is not None and fraction > 0 and entity_share(model_name, entity_id) < fraction


def check_fraction(fraction: float) -> float:
    """A canary's traffic fraction: in (0, 1]."""
    if not 0 < fraction <= 1:
        raise ValueError(f"a canary's traffic fraction must be in (0, 1], not {fraction}")
    return float(fraction)
