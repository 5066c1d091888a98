"""What runs inside Ray's worker processes: the one Ray task shoal submits, ``run_on_worker``.

Ray pickles ``run_on_worker`` by reference, so a worker imports this module (and the package's
light ``__init__``), never the driver's backend. Runs reach it as one ``bytes`` argument and their
outcomes go back as one ``bytes`` value (``shoal.backends.task_codec``): Ray stores and hands back
bytes as they are, while any other value goes through its msgpack and pickle layers on the worker
and again on the driver (measured: about a quarter of the driver's time per task). A run's start
goes back to the driver as one line into its start pipe (``shoal.backends.ray.start``), a watched
run's output through its echo pipe (``.echo``).
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from shoal.execution import (
    RunBatch,
    RunOutcome,
    RunTask,
    execute_batch,
    execute_registered,
    never_started,
    stop_attempt,
)

from ..task_codec import decode, encode

_code_cache: dict[str, Any] = {}  # function hash -> Code, in each worker process
_start_pipes: dict[str, int] = {}  # path of the driver's start pipe -> open fd (-1: unusable here)
_node_id: list[str] = []


def run_on_worker(payload: bytes, code: list | None = None) -> bytes:
    """The Ray task: one attempt of one run, or a batch of short runs; its outcome (the batch's
    list of outcomes) comes back encoded (``returned_outcome`` reads it).

    ``payload`` is ``(task, start pipe path, echo pipe path)`` encoded by the driver. Large code
    travels once per function as an object in Ray's store: ``code`` then holds its reference inside
    a list, so Ray does not fetch it for every task, only a worker that has not seen the function
    yet. The pipes are the driver's, when the driver is on this machine; the echo pipe is given for
    watched runs only.
    """
    from shoal.logcapture import echo_to

    from .echo import sink

    task, starts, echo = decode(payload)
    announce = _announcer(starts) if starts else None
    with _cancel_as_stop(task.uids) as cancelled, echo_to(sink(echo) if echo else None):
        if isinstance(task, RunBatch):
            for member in task.tasks:
                _fill_code(member, code)
            refused = (lambda uid: cancelled.is_set()) if cancelled is not None else None
            return encode(execute_batch(task, announce, refused=refused, cancel_ends_batch=True))
        _fill_code(task, code)
        if cancelled is not None and cancelled.is_set():  # cancelled before the handler began
            return encode(never_started(task))
        return encode(execute_registered(task, announce))


@contextmanager
def _cancel_as_stop(uids: tuple[str, ...]) -> Iterator[threading.Event | None]:
    """Ray's cancel of a running task as shoal's own stop request. Ray interrupts the task's main
    thread (a KeyboardInterrupt wherever it lands) and repeats that while the task runs (its
    ``cancellation_retry_ms``); a repeat landing after the attempt ended, as its outcome is encoded,
    dropped that outcome and everything the run had logged. Here the interrupt stops the running
    attempt through its ``StopSignal`` (which raises only inside the handler) and sets the event
    it yields, so no run of this task starts afterwards. Yields None where the task does not run in
    the main thread (signal handlers cannot be set there): Ray's KeyboardInterrupt then applies."""
    if threading.current_thread() is not threading.main_thread():
        yield None
        return
    cancelled = threading.Event()

    def on_interrupt(signum: int, frame: Any) -> None:
        cancelled.set()
        for uid in uids:
            stop_attempt(uid)

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield cancelled
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)


def returned_outcome(value: Any) -> RunOutcome | list[RunOutcome] | Any:
    """What a task of ``run_on_worker`` returned, decoded: a run's outcome, or a batch's list of
    them; any other value (Ray's error) as it is."""
    return decode(value) if isinstance(value, bytes) else value


def members(task: RunTask | RunBatch) -> list[RunTask]:
    """The runs a Ray task carries: the batch's, or the one."""
    return task.tasks if isinstance(task, RunBatch) else [task]


def _fill_code(task: RunTask, code: list | None) -> None:
    if task.code is None:
        cached = _code_cache.get(task.function_hash)
        if cached is None:
            import ray

            assert code, "a task shipped without its code carries the code's reference"
            cached = _code_cache[task.function_hash] = ray.get(code[0])
        task.code = cached


def _announcer(path: str) -> Callable[[str, float], None]:
    """``on_start`` for a worker: one line into the driver's pipe (atomic, never blocks; a line that
    does not fit while the driver lags is dropped: the run then shows as running only when done)."""

    def announce(uid: str, started: float) -> None:
        fd = _start_pipes.get(path)
        if fd is None:
            try:
                fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:
                fd = -1  # not on the driver's machine
            _start_pipes[path] = fd
        if fd >= 0:
            try:
                os.write(fd, f"{uid} {started!r} {_this_node()}\n".encode())
            except OSError:
                pass

    return announce


def _this_node() -> str:
    if not _node_id:
        import ray

        _node_id.append(ray.get_runtime_context().get_node_id())
    return _node_id[0]


__all__ = ["members", "returned_outcome", "run_on_worker"]
