"""Process identity of tuning drivers (``shoal.tuning.recovery.dead``): real processes, no mocks.

A driver recorded on a study is dead when it ran on this machine and no process with its pid and
start time runs any more. Whole searches resumed after a SIGKILL are tested in test_tuning_storage.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from shoal.tuning.recovery import HOST, dead, owner

from helpers import reaped_pid


@pytest.fixture
def child():
    """A live process of ours, waiting on its stdin until the test ends."""
    process = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    yield process
    process.stdin.close()
    process.wait(30)


def _start(pid: int) -> float:
    import psutil

    return psutil.Process(pid).create_time()


def test_this_process_is_alive_and_an_earlier_process_with_its_pid_is_not():
    me = owner()
    assert me["host"] == HOST and me["pid"] == os.getpid() and isinstance(me["start"], float)
    assert not dead(me)
    assert dead({**me, "start": me["start"] - 3600})  # same pid, started an hour earlier: not us
    assert dead({**me, "start": None})


def test_a_live_process_is_alive_until_its_pid_names_another_start(child):
    alive = {"host": HOST, "pid": child.pid, "start": _start(child.pid)}
    assert not dead(alive)
    assert not dead({**alive, "start": None})  # start unknown: the pid alone decides
    assert dead({**alive, "start": alive["start"] - 3600})  # the pid was reused


def test_a_reaped_process_is_dead():
    assert dead({"host": HOST, "pid": reaped_pid(), "start": None})


def test_start_times_recorded_by_earlier_versions_as_clock_ticks_still_compare(child):
    """Studies written before psutil hold /proc's start time (clock ticks since boot) as text."""
    with open(f"/proc/{child.pid}/stat", "rb") as handle:
        ticks = handle.read().rsplit(b")", 1)[1].split()[19].decode()
    assert not dead({"host": HOST, "pid": child.pid, "start": ticks})
    assert dead({"host": HOST, "pid": child.pid, "start": "0"})


def test_a_driver_on_another_machine_or_without_a_pid_is_left_to_the_heartbeat():
    assert not dead({"host": HOST + "-elsewhere", "pid": 1, "start": 0.0})
    assert not dead({"host": HOST, "pid": "123", "start": None})
    assert not dead({"host": HOST, "pid": True, "start": None})
