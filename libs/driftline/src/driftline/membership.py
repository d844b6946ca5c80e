"""Static consumer-group membership that survives a restart: a stable ``group.instance.id``.

A member that dies without leaving (SIGKILL, OOM) holds its partitions until its session times
out; a restarted process with a new member id waits that long before the group rebalances. With
static membership (KIP-345) a restarted member that comes back with the same
``group.instance.id`` takes its old assignment at once, without a rebalance. The id must be
stable across restarts of one copy and unique among the copies running at the same time:
:func:`stable_instance_id` takes the host name (a pod's name on Kubernetes) and the first free
*slot* on this host — slot ``i`` is held by an exclusive ``flock`` on ``<lock_dir>/slot-<i>.lock``
for the life of the process. The kernel releases the lock when the process dies, however it
dies, so a copy restarted in its place takes the same slot again, and a second copy started
next to it on the same host takes the next one.

The price: a static member does not leave the group when it stops, so when a copy is stopped for
good (scaling in) its partitions move after the session timeout, not at once.
"""

from __future__ import annotations

import fcntl
import os
import re
import socket
from pathlib import Path
from typing import IO


class InstanceSlot:
    """A held slot: ``id`` is the ``group.instance.id``; :meth:`release` frees the slot (it is
    freed anyway when the process exits)."""

    def __init__(self, instance_id: str, lock: IO[bytes]) -> None:
        self.id = instance_id
        self._lock: IO[bytes] | None = lock

    def release(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the file drops its flock
            self._lock = None
            _held.discard(self)


_held: set[InstanceSlot] = set()  # held until released: never dropped (and unlocked) by garbage collection


def stable_instance_id(name: str, lock_dir: Path, *, max_slots: int = 64) -> InstanceSlot:
    """``<name>-<host>-<slot>`` with the first slot no running process holds (see the module).

    Every call takes a slot of its own, also within one process (two members of one group in a
    process must not share an id): the lock is an ``flock`` on a file opened for the call."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    host = re.sub(r"[^\w.-]", "_", socket.gethostname()) or "host"
    for slot in range(max_slots):
        f = (lock_dir / f"slot-{slot}.lock").open("ab")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            continue
        os.set_inheritable(f.fileno(), False)
        held = InstanceSlot(f"{name}-{host}-{slot}", f)
        _held.add(held)
        return held
    raise RuntimeError(f"{max_slots} copies of {name} already run on this host ({lock_dir})")
