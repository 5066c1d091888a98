"""A short GIL switch interval while a worker's background trial work runs, so it never holds up the
trial that is running.

A worker samples the next trial (TPE: a few ms of Python and small numpy calls) and writes tells on
threads of its own while a trial's handler runs. When the handler's thread wakes (its sleep or its
I/O is over), it waits for the GIL until the busy thread lets go, which CPython forces only after
the switch interval: 5 ms by default. Each trial then lasted up to that much longer than its
handler. Measured on 200 trials of 10 ms at parallelism 2 (``perf/tuning.py``'s short trials),
runs took 11.3-12.4 ms on Dask and ~10.7 ms on Ray; with 0.5 ms while background work runs,
10.6-10.8 ms and 10.6 ms (Dask 152-165 -> 170-178 trials/s, Ray 177 -> 180-182).

The interval is the process's, so it is shortened only while such work runs (a count, as jobs
overlap) and comes back when the last ends, unless the application set its own meanwhile.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

#: Seconds a busy background thread may keep the GIL while another thread waits for it.
BACKGROUND_SWITCH_INTERVAL = 0.0005

T = TypeVar("T")

_lock = threading.Lock()
_running = 0
_saved: float | None = None  # the interval to restore, when this module shortened it


def _enter() -> None:
    global _running, _saved
    with _lock:
        if _running == 0:
            current = sys.getswitchinterval()
            _saved = current if current > BACKGROUND_SWITCH_INTERVAL else None
            if _saved is not None:
                sys.setswitchinterval(BACKGROUND_SWITCH_INTERVAL)
        _running += 1


def _leave() -> None:
    global _running, _saved
    with _lock:
        _running -= 1
        if _running == 0 and _saved is not None:
            if _is_ours(sys.getswitchinterval()):  # else the application set its own meanwhile
                sys.setswitchinterval(_saved)
            _saved = None


def _is_ours(interval: float) -> bool:
    return abs(interval - BACKGROUND_SWITCH_INTERVAL) < 1e-6  # CPython keeps microseconds


def yielding(call: Callable[..., T]) -> Callable[..., T]:
    """``call`` run under the short switch interval (for a background thread's job)."""

    def job(*args: Any, **kwargs: Any) -> T:
        _enter()
        try:
            return call(*args, **kwargs)
        finally:
            _leave()

    return job


def _forget_in_child() -> None:
    """A forked child has none of its parent's background threads: its interval comes back."""
    global _running, _saved
    if _saved is not None and _is_ours(sys.getswitchinterval()):
        sys.setswitchinterval(_saved)
    _running, _saved = 0, None


if hasattr(os, "register_at_fork"):  # not on Windows, which does not fork
    os.register_at_fork(after_in_child=_forget_in_child)


__all__ = ["BACKGROUND_SWITCH_INTERVAL", "yielding"]
