"""What runs inside Ray's worker processes: the one Ray task shoal submits, ``run_on_worker``.

Ray pickles ``run_on_worker`` by reference, so a worker imports this module (and the package's
light ``__init__``), never the driver's backend; ``carrying``'s closure, by value, is that reference
and a function's code. Runs reach it as one ``bytes`` argument and their
outcomes go back as one ``bytes`` value (``shoal.backends.task_codec``): Ray stores and hands back
bytes as they are, while any other value goes through its msgpack and pickle layers on the worker
and again on the driver (measured: about a quarter of the driver's time per task). The start of a
run that lasts goes back to the driver as one line into its start pipe (``.announce``), a watched
run's output through its echo pipe (``.echo``).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from functools import partial
from typing import Any

from shoal.code import Code
from shoal.execution import (
    RunBatch,
    RunOutcome,
    RunTask,
    execute_batch,
    execute_registered,
    never_started,
    stop_attempt,
)
from shoal.logcapture import echo_to

from ..task_codec import decode, encode_outcome
from .announce import note_end, note_start, write_end, write_start
from .echo import sink

_code_cache: dict[str, Any] = {}  # function hash -> Code, in each worker process


def run_on_worker(payload: bytes, code: list | Code | None = None) -> bytes:
    """The Ray task: one attempt of one run, or a batch of short runs; its outcome (the batch's
    list of outcomes) comes back encoded (``returned_outcome`` reads it).

    ``payload`` is ``(task, start pipe path, echo pipe path, end)`` encoded by the driver. A task
    shipped without its code gets it as ``code``: the Code itself, carried by the remote function
    (``carrying``), or, for large code, which travels once per function as an object in Ray's
    store, its reference inside a list, so Ray does not fetch it for every task, only a worker
    that has not seen the function yet. The pipes are the driver's, when the driver is on this
    machine; the echo pipe is given for watched runs only; ``end``, the start pipe's path and this submission's token,
    when the driver waits for the task's end line, which carries a small outcome (``.ends``).
    """
    with cancel_as_stop(()) as setting_up:  # Ray's interrupt while decoding (imports) only marks it
        task, starts, echo, end = decode(payload)
    return run_task(task, starts, echo, code, end, cancelled_before=was_cancelled(setting_up))


def carrying(code: Code) -> Callable[[bytes], bytes]:
    """``run_on_worker`` with the function's code bound: the remote function of that code's tasks.
    Ray pickles a remote function once, exports it once, and each worker loads it once, so the
    code crosses to a worker once instead of inside every task (where each worker decoded it
    again for every run, to use only the first time: the handler is cached by function hash)."""

    def run_carrying_code(payload: bytes) -> bytes:
        return run_on_worker(payload, code)

    return run_carrying_code


def run_task(
    task: RunTask | RunBatch,
    starts: str | None,
    echo: str | None,
    code: list | Code | None,
    end: tuple[str, str] | None = None,
    cancelled_before: bool = False,
) -> bytes:
    """``run_on_worker`` on a task already decoded (a pipeline step's, see ``.dependencies``). With
    ``end`` (a pipe and the submission's token), the task's end line is written as it returns, also
    when it raises (the driver then gets Ray's error), while Ray's interrupts still only stop runs.
    ``cancelled_before``: Ray interrupted the task while it was being set up (decoded): its runs
    do not start."""
    announce = None
    if starts:  # watched runs' starts at once, the others' once they last (see ``.announce``)
        announce = partial(write_start if echo else note_start, starts)
    value = None
    with cancel_as_stop(task.uids) as cancelled, echo_to(sink(echo)) if echo else nullcontext():
        if cancelled_before and cancelled is not None:
            cancelled.set()
        try:
            value = _outcome_of(task, announce, cancelled, code)
            return value
        finally:
            if announce is not None:
                note_end()
            if end is not None:
                write_end(end[0], end[1], value)


def _outcome_of(
    task: RunTask | RunBatch, announce: Any, cancelled: _Cancelled | None, code: list | Code | None
) -> bytes:
    """The task's runs executed, their outcome (a batch's list of them) encoded."""
    if isinstance(task, RunBatch):
        for member in task.tasks:
            _fill_code(member, code)
        refused = (lambda uid: cancelled.is_set()) if cancelled is not None else None
        return encode_outcome(execute_batch(task, announce, refused=refused, cancel_ends_batch=True))
    _fill_code(task, code)
    if cancelled is not None and cancelled.is_set():  # cancelled before the handler began
        return encode_outcome(never_started(task))
    return encode_outcome(execute_registered(task, announce))


class _Cancelled:
    """Whether Ray cancelled the running task: set by the SIGINT handler, which runs in the task's
    own thread, so a flag needs no lock (a ``threading.Event`` made a Condition and a lock per task)."""

    __slots__ = ("cancelled",)

    def __init__(self) -> None:
        self.cancelled = False

    def set(self) -> None:
        self.cancelled = True

    def is_set(self) -> bool:
        return self.cancelled


class _Interrupts:
    """Ray's cancel of a running task as shoal's own stop request. Ray interrupts the task's main
    thread (a KeyboardInterrupt wherever it lands) and repeats that while the task runs (its
    ``cancellation_retry_ms``); a repeat landing after the attempt ended, as its outcome is encoded,
    dropped that outcome and everything the run had logged. So while a task runs, SIGINT stops its
    running attempt through its ``StopSignal`` (which raises only inside the handler) and sets the
    task's event, so no run of this task starts afterwards; between tasks it does what the handler
    before shoal's did. The handler is set once per worker process (measured: setting and restoring
    it for every task cost ~17 us, about a tenth of a no-op task's time in shoal's code)."""

    def __init__(self) -> None:
        self.installed = False
        self.previous: Any = None
        self.current: tuple[tuple[str, ...], _Cancelled] | None = None

    def install(self) -> None:
        self.previous = signal.signal(signal.SIGINT, self.on_interrupt)
        self.installed = True

    def on_interrupt(self, signum: int, frame: Any) -> None:
        current = self.current
        if current is None:  # between tasks: as before shoal's handler
            if callable(self.previous):
                self.previous(signum, frame)
            elif self.previous != signal.SIG_IGN:
                raise KeyboardInterrupt
            return
        uids, cancelled = current
        cancelled.set()
        for uid in uids:
            stop_attempt(uid)


_interrupts = _Interrupts()


@contextmanager
def cancel_as_stop(uids: tuple[str, ...]) -> Iterator[_Cancelled | None]:
    """The task's runs stop on Ray's cancel (see ``_Interrupts``); yields the flag that says the
    task was cancelled, or None where the task does not run in the main thread (signal handlers
    cannot be set there): Ray's KeyboardInterrupt then applies."""
    if threading.current_thread() is not threading.main_thread():
        yield None
        return
    if not _interrupts.installed:
        _interrupts.install()
    cancelled = _Cancelled()
    outer, _interrupts.current = _interrupts.current, (uids, cancelled)
    try:
        yield cancelled
    finally:
        _interrupts.current = outer


def was_cancelled(cancelled: _Cancelled | None) -> bool:
    """Whether ``cancel_as_stop``'s flag says Ray cancelled the task (None: no flag, not known)."""
    return cancelled is not None and cancelled.is_set()


def returned_outcome(value: Any) -> RunOutcome | list[RunOutcome] | Any:
    """What a task of ``run_on_worker`` returned, decoded: a run's outcome, or a batch's list of
    them; any other value (Ray's error) as it is."""
    return decode(value) if isinstance(value, bytes) else value


def members(task: RunTask | RunBatch) -> list[RunTask]:
    """The runs a Ray task carries: the batch's, or the one."""
    return task.tasks if isinstance(task, RunBatch) else [task]


def _fill_code(task: RunTask, code: list | Code | None) -> None:
    """Put back the code of a task shipped without it: the Code given, or the one behind the
    reference given (fetched once per function and worker)."""
    if task.code is not None:
        return
    if isinstance(code, Code):
        task.code = code
        return
    cached = _code_cache.get(task.function_hash)
    if cached is None:
        import ray

        assert code, "a task shipped without its code carries the code's reference"
        cached = _code_cache[task.function_hash] = ray.get(code[0])
    task.code = cached


__all__ = ["cancel_as_stop", "carrying", "members", "returned_outcome", "run_on_worker", "run_task", "was_cancelled"]
