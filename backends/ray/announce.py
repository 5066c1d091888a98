"""The worker's end of the start pipe: a run's start goes to the driver only once the run has been
running for ``ANNOUNCE_AFTER`` seconds.

A line for every run cost the driver a wake-up of its reader and a callback per run (measured: about
a tenth of its CPU in a map of 2,000 no-op runs, one task each), for starts nobody could see: a short
run's outcome comes right after and carries its start time (a failed attempt's is reported as its
start then, see ``RayBackend.ended_unannounced``, so a retried run keeps its first start). So the
task's thread only notes the run it is in (one assignment), and one
thread per worker process looks every ``ANNOUNCE_AFTER`` seconds and writes the start of a run it
found there the time before too. The thread ends after ``IDLE`` seconds without runs. Watched runs
(``watch=True``) are announced at once: their output reaches the driver while they run, and a run
whose output shows is running.
"""

from __future__ import annotations

import base64
import os
import select
import threading
import time

ANNOUNCE_AFTER = 0.05  # seconds between looks: a run is announced 0.05 to 0.1 s after it began
IDLE = 10.0  # seconds without a run after which the thread ends (the next run starts another)

_lock = threading.Lock()
_current: tuple[str, str, float] | None = None  # (start pipe path, uid, started) of the run in progress
_watching = False  # a watcher thread runs
_pipes: dict[str, int] = {}  # start pipe path -> open fd (-1: not reachable from this machine)
_node: list[str] = []  # this worker's Ray node id, looked up once


def note_start(path: str, uid: str, started: float) -> None:
    """Note that run ``uid`` began (on the task's thread); its start is written if it is still the
    run in progress at the watcher's next look but one."""
    global _current, _watching
    with _lock:  # with the watcher's exit check: a noted run never finds no watcher
        _current = (path, uid, started)
        if not _watching:
            _watching = True
            threading.Thread(target=_watch, name="shoal-ray-announce", daemon=True).start()


def note_end() -> None:
    """The task's runs are over: nothing in progress to announce."""
    global _current
    _current = None


def _watch() -> None:
    global _watching
    seen = written = None
    idle_since = time.monotonic()
    while True:
        time.sleep(ANNOUNCE_AFTER)
        current = _current
        if current is None:
            if time.monotonic() - idle_since > IDLE:
                with _lock:
                    if _current is None:
                        _watching = False
                        return
            continue
        idle_since = time.monotonic()
        if current is seen and current is not written:
            write_start(*current)
            written = current
        seen = current


def write_start(path: str, uid: str, started: float) -> None:
    """One line into the driver's pipe: atomic and never blocking (a line that does not fit while
    the driver lags is dropped: the run then shows as running only when its outcome comes)."""
    _write(path, f"{uid} {started!r} {_this_node()}\n")


def write_end(path: str, token: str, value: bytes | None) -> None:
    """The task submitted as ``token`` returns ``value`` now (``shoal.backends.ray.ends``): ``token
    end`` and, when the line stays within one atomic pipe write, the value (base64), which spares
    the driver fetching it from Ray. Dropped like a start line when the pipe is full (the driver's
    look at unreported tasks then finds the task)."""
    line = f"{token} end"
    if value is not None:
        data = base64.b64encode(value).decode()
        if len(line) + len(data) + 2 <= select.PIPE_BUF:
            line = f"{line} {data}"
    _write(path, line + "\n")


def _write(path: str, line: str) -> None:
    fd = _pipes.get(path)
    if fd is None:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            fd = -1  # not on the driver's machine
        _pipes[path] = fd
    if fd >= 0:
        try:
            os.write(fd, line.encode())
        except OSError:
            pass


def _this_node() -> str:
    if not _node:
        import ray

        _node.append(ray.get_runtime_context().get_node_id())
    return _node[0]


__all__ = ["ANNOUNCE_AFTER", "note_end", "note_start", "write_end", "write_start"]
