"""The processes of a Ray instance or cluster this backend started, found and stopped by PID.

Ray's daemons may ignore SIGTERM and its agents outlive the raylet that started them, and ``ray stop``
would kill every Ray on the machine. So every process shoal starts for Ray carries a marker in its
environment (``MARKER=token``); the processes are found by it (with psutil), and by the session
``ray start`` leads, and killed by PID, with SIGKILL after a grace period. A small watchdog process
does the same if the driver dies without closing.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import psutil

MARKER = "SHOAL_RAY_CLUSTER"  # environment variable naming the cluster each process belongs to


def cluster_pids(
    token: str, session: int | None = None, root: str | None = None, spare: Iterable[int] = ()
) -> list[int]:
    """PIDs of the live processes of a cluster: those whose environment carries ``MARKER=token``,
    Ray's processes in its ``session``, and their descendants (Ray starts its agents without the
    marker). With ``root`` (the cluster's folder), also processes holding a file open in it: Ray's
    agents, once the raylet that started them is gone, are no one's descendants, and can outlive it
    by minutes. ``spare``: PIDs never counted (the driver, which holds files of its own in the folder)."""
    spare = {os.getpid(), *spare}
    children: dict[int, list[int]] = {}
    ours: set[int] = set()
    for process in psutil.process_iter(["ppid", "status"]):
        pid = process.pid
        if pid in spare or process.info["status"] in (psutil.STATUS_ZOMBIE, None):
            continue
        children.setdefault(process.info["ppid"], []).append(pid)
        try:
            if _is_ours(process, token, session, root):
                ours.add(pid)
        except (psutil.Error, OSError):
            continue  # gone, or not ours to read
    found, todo = set(), list(ours)
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, ()))
    return sorted(found)


def _is_ours(process: psutil.Process, token: str, session: int | None, root: str | None) -> bool:
    if process.environ().get(MARKER) == token:
        return True
    if session is not None and os.getsid(process.pid) == session and "ray" in " ".join(process.cmdline()):
        return True
    if root is not None:
        prefix = os.path.join(root, "")
        return any(f.path.startswith(prefix) for f in process.open_files())
    return False


def stop_processes(pids: Iterable[int], grace: float = 1.5) -> None:
    """SIGTERM the processes, SIGKILL those still there after ``grace`` seconds (Ray's daemons may
    ignore SIGTERM); waits at most 5 s more for them to go."""
    processes = [process for process in map(_process, pids) if process is not None]
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        for process in processes:
            try:
                process.send_signal(sig)  # psutil checks it is still the same process (no PID reuse)
            except psutil.Error:
                pass
        end = time.monotonic() + wait
        while processes and time.monotonic() < end:
            time.sleep(0.1)
            processes = [process for process in processes if _alive(process)]
        if not processes:
            return


def _process(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.Error:
        return None


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def kill_cluster(
    token: str, session: int | None = None, grace: float = 1.5, root: str | None = None, spare: Iterable[int] = ()
) -> None:
    """Stop every process of a cluster (see ``cluster_pids``), and any that appeared meanwhile."""
    for _ in range(3):
        pids = cluster_pids(token, session, root, spare)
        if not pids:
            return
        stop_processes(pids, grace)


# -- a watchdog for a driver that dies without closing -----------------------------------------------
def start_watchdog(token: str, root: Path) -> subprocess.Popen:
    """A process that kills the cluster and removes its folder once this one is gone: its stdin
    gets the cluster's session, then closes when we die (or close)."""
    return subprocess.Popen(
        [sys.executable, "-c", f"from shoal.backends.ray.processes import watch; watch({token!r}, {str(root)!r})"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # a Ctrl-C at the terminal must not kill it before the cluster
    )


def tell_watchdog(watchdog: subprocess.Popen | None, session: int) -> None:
    """Hand the watchdog the session that ``ray start`` leads (its processes are the cluster's)."""
    try:
        watchdog.stdin.write(f"{session}\n".encode())  # type: ignore[union-attr]
        watchdog.stdin.flush()  # type: ignore[union-attr]
    except (AttributeError, OSError):
        pass


def watch(token: str, root: str) -> None:
    """The watchdog's body: wait for the end of stdin, then stop the cluster (never the driver that
    started it: on a normal close it is alive and still holds files in the folder)."""
    driver = os.getppid()
    line = sys.stdin.readline().strip()
    sys.stdin.read()
    kill_cluster(token, int(line) if line.isdigit() else None, root=root, spare=[driver])
    shutil.rmtree(root, ignore_errors=True)


def reap_watchdog(watchdog: subprocess.Popen) -> None:
    """Close the watchdog's stdin (it finds nothing left to kill and exits) and wait for it."""
    try:
        watchdog.stdin.close()  # type: ignore[union-attr]
        watchdog.wait(10)
    except (OSError, subprocess.TimeoutExpired):
        watchdog.kill()
        watchdog.wait()


__all__ = ["MARKER", "cluster_pids", "kill_cluster", "reap_watchdog", "start_watchdog", "stop_processes", "watch"]
