"""Writes what the run recorders of this process still hold before the process ends.

A driver that ends with outcomes queued would lose them: the handles of those runs resolved in
memory, but the database still says pending. Two ways out are covered: interpreter exit (a normal
end, Ctrl-C) flushes every recorder from an ``atexit`` hook; SIGTERM, which by default ends the
process without running any exit hook, gets a handler that writes first and then ends the process
the way SIGTERM always did (see ``_on_sigterm``).
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .recorder import Recorder

log = logging.getLogger("shoal.recorder")
SIGTERM_WRITE_TIMEOUT = 60.0  # seconds a terminated driver waits for its last outcomes to be written

_recorders: weakref.WeakSet[Recorder] = weakref.WeakSet()
_sigterm_installed = False
_sigterm_pid = 0  # the process that installed the handler: a forked child inherits it, not the recorders


def register(recorder: Recorder) -> None:
    """Have ``recorder`` flushed at exit and on SIGTERM (held weakly: a dropped recorder is forgotten)."""
    _recorders.add(recorder)
    _stop_on_sigterm()


def _stop_on_sigterm() -> None:
    """Make SIGTERM write the outcomes this process received before it ends (see ``_on_sigterm``).

    Installed once, from the main thread, and only over the default action: a handler the program
    set itself is left alone (Python's own default would end the process without writing anything).
    """
    global _sigterm_installed, _sigterm_pid
    if _sigterm_installed or threading.current_thread() is not threading.main_thread():
        return
    try:
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return
        signal.signal(signal.SIGTERM, _on_sigterm)
    except (ValueError, OSError):  # no signals here (an embedded interpreter): exit flushes still run
        return
    _sigterm_installed, _sigterm_pid = True, os.getpid()


def _on_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM ends the process as it always did, but first writes every outcome that reached it.

    The writing runs in a helper thread, bounded by SIGTERM_WRITE_TIMEOUT (a database that does not
    answer must not keep a terminated driver alive), and ends holding each recorder's hand-over lock
    with its queue empty, so no outcome is taken over in the moment before the process ends. If the
    interrupted code holds a recorder's lock itself, it cannot be waited for here: the process then
    exits by SystemExit, and the exit flush writes what is queued.
    """
    busy = [recorder for recorder in list(_recorders) if recorder.outstanding] if os.getpid() == _sigterm_pid else []
    if busy:
        if any(recorder.hand_over_lock.locked() for recorder in busy):
            raise SystemExit(128 + signum)
        log.warning("SIGTERM: writing the outcomes this process received before it ends")
        _write_all_before_exit(busy, time.monotonic() + SIGTERM_WRITE_TIMEOUT)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def _write_all_before_exit(recorders: list[Recorder], deadline: float) -> None:
    """Flush ``recorders`` until their queues stay empty; return holding their locks (or at the deadline)."""
    while time.monotonic() < deadline:
        writer = threading.Thread(target=_flush_each, args=(recorders,), name="shoal-sigterm", daemon=True)
        writer.start()
        writer.join(max(0.0, deadline - time.monotonic()))
        if writer.is_alive():
            log.error("SIGTERM: the database did not take the last outcomes in time; ending anyway")
            return
        locks = [r.hand_over_lock for r in recorders]
        held = [lock for lock in locks if lock.acquire(timeout=max(0.0, deadline - time.monotonic()))]
        if len(held) == len(recorders) and not any(r.unwritten for r in recorders):
            return  # the locks stay held: the process ends before anything else is queued
        for lock in held:
            lock.release()


def _flush_each(recorders: list[Recorder]) -> None:
    for recorder in recorders:
        recorder.flush()


@atexit.register
def _flush_all() -> None:
    for recorder in list(_recorders):
        try:
            recorder.flush()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass
