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

_held: dict[Path, IO[bytes]] = {}


def stable_instance_id(name: str, lock_dir: Path, *, max_slots: int = 64) -> str:
    """``<name>-<host>-<slot>``, the slot held by this process until it exits (see the module)."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    host = re.sub(r"[^\w.-]", "_", socket.gethostname()) or "host"
    for slot in range(max_slots):
        path = lock_dir / f"slot-{slot}.lock"
        if path in _held:
            return f"{name}-{host}-{slot}"  # this process holds it already
        f = path.open("ab")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            continue
        os.set_inheritable(f.fileno(), False)
        _held[path] = f
        return f"{name}-{host}-{slot}"
    raise RuntimeError(f"{max_slots} copies of {name} already run on this host ({lock_dir})")
