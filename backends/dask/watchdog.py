"""Ends the processes of an embedded Dask cluster whose driver died without closing it.

Every process of the cluster (scheduler, Nanny, worker, whatever a handler starts) carries
``SHOAL_DASK_CLUSTER=<token>`` in its environment. The driver starts this file as a program of its
own (``python -I watchdog.py TOKEN FOLDER``, in a session of its own) with a pipe on its
stdin; the pipe reaches end-of-file when the driver closes it or dies, SIGKILL and SIGTERM included,
and the watchdog then kills every process that carries the token and removes the cluster's folder. Only the standard library and psutil (a
dependency of distributed): it must start fast and import nothing of the user's.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

MARKER = "SHOAL_DASK_CLUSTER"
GONE_WAIT = 5.0  # seconds to wait for killed processes to disappear


def marked_pids(token: str) -> list[int]:
    """PIDs of the live processes whose environment carries ``MARKER=token`` (not this one)."""
    import psutil

    found = []
    for process in psutil.process_iter():
        if process.pid == os.getpid():
            continue
        try:
            if process.environ().get(MARKER) == token and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process.pid)
        except (psutil.Error, OSError):
            continue  # gone, or another user's
    return sorted(found)


def alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def kill_marked(token: str) -> list[int]:
    """SIGKILL every process of the cluster (and any that appeared meanwhile); the PIDs killed."""
    killed: list[int] = []
    for _ in range(3):
        pids = marked_pids(token)
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        killed.extend(pids)
        end = time.monotonic() + GONE_WAIT
        while any(alive(pid) for pid in pids) and time.monotonic() < end:
            time.sleep(0.05)
    return killed


# -- the driver's side -------------------------------------------------------------------------------
def start_watchdog(token: str, folder: str) -> subprocess.Popen:
    """This file as a program watching for the end of its stdin: when this process closes it or dies."""
    return subprocess.Popen(
        [sys.executable, "-I", os.path.abspath(__file__), token, folder],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # a Ctrl-C at the terminal must not end it before the cluster
    )


def release_watchdog(watchdog: subprocess.Popen) -> None:
    """Close its stdin (it kills what is left, usually nothing) and wait for it."""
    try:
        if watchdog.stdin is not None:  # always: start_watchdog opens it as a pipe
            watchdog.stdin.close()
        watchdog.wait(10)
    except (OSError, subprocess.TimeoutExpired):
        watchdog.kill()
        watchdog.wait()


def main(argv: list[str]) -> int:
    token, folder = argv[1], argv[2]
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    try:
        while sys.stdin.buffer.read(4096):
            pass
    except OSError:
        pass
    kill_marked(token)
    shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
