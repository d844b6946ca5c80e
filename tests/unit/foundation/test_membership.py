"""Stable group instance ids: a copy restarted in place gets its id back, a second copy another."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from driftline.membership import stable_instance_id

HOLD = """
import sys, time
from pathlib import Path
from driftline.membership import stable_instance_id
print(stable_instance_id("features", Path(sys.argv[1])).id, flush=True)
time.sleep(60)
"""


def start_copy(lock_dir: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(lock_dir)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def test_a_killed_copy_restarted_in_place_gets_its_id_back_and_a_second_copy_another(tmp_path: Path) -> None:
    first, first_id = start_copy(tmp_path)
    second, second_id = start_copy(tmp_path)
    try:
        assert first_id.startswith("features-") and first_id.endswith("-0")
        assert second_id.endswith("-1"), "two copies running side by side must not share an id"
        first.send_signal(signal.SIGKILL)
        first.wait()
        restarted, restarted_id = start_copy(tmp_path)
        try:
            assert restarted_id == first_id, "the lock of a killed copy is released by the kernel"
        finally:
            restarted.kill()
            restarted.wait()
    finally:
        for p in (first, second):
            p.kill()
            p.wait()


def test_two_members_in_one_process_get_two_slots_and_a_released_slot_is_taken_again(tmp_path: Path) -> None:
    a, b = stable_instance_id("x", tmp_path), stable_instance_id("x", tmp_path)
    assert (a.id[-2:], b.id[-2:]) == ("-0", "-1")
    a.release()
    assert stable_instance_id("x", tmp_path).id == a.id
