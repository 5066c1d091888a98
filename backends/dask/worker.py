"""The worker side of the ``dask`` backend: the task Dask executes, the cancellation that reaches
runs where they run, and the worker preload of the embedded cluster.

Workers import this module (by the reference in each pickled task, and as the preload
``shoal.backends.dask.worker``); it needs ``shoal.execution`` and nothing of the driver side.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from shoal.execution import (
    RunBatch,
    RunOutcome,
    RunTask,
    execute_batch,
    execute_registered,
    never_started,
    stop_attempt,
)
from shoal.gc_freeze import older_objects_frozen

from ..task_codec import decode, encode_outcome
from ._compat import next_ready_call
from .shipping import with_code

if TYPE_CHECKING:  # pragma: no cover
    from shoal.code import Code

START_TOPIC = "shoal-run-start"  # the Dask event topic of run starts (see ``StartReports``)
MAX_REFUSED = 10_000  # cancelled-before-start uids a worker remembers
# Starts that happen within START_LINGER seconds of each other go to the driver in one event.
START_LINGER = 0.01


def run_on_worker(packed: bytes, key: str, code: Code | None = None) -> RunOutcome | bytes:
    """The task Dask executes: one attempt (or a batch of short runs), announcing starts to the driver
    (``StartReports``). The attempt arrives encoded (``shoal.backends.task_codec``); its code, when
    it travels once per function (``.shipping``), arrives as ``code``. A batch's outcomes go back
    encoded too (``DaskFuture`` decodes them): Dask serialises each element of a returned list as
    a value of its own, with its own frames, which cost the driver's event loop more than the
    records of a 20,000-run map (measured: 20,000 unpickle calls, ~0.1 s of CPU, against 20)."""
    from distributed import get_worker

    task: RunTask | RunBatch = with_code(decode(packed), code)
    try:
        worker = get_worker()
    except ValueError:  # not inside a worker (e.g. client.run): nothing to announce
        worker = None

    last = _last_that_prepares(task)

    def announce(uid: str, started: float) -> None:
        if worker is not None:
            _start_reports.add(worker, key, uid, started)
            if uid == last:
                _prepare_queued(worker)

    try:
        return _execute(task, announce)
    finally:
        if worker is not None:
            _start_reports.task_ended(worker, key)


def _last_that_prepares(task: RunTask | RunBatch) -> str | None:
    """The uid of a batch's last run if its runs prepare queued ones (tuning trials): its start
    lets the next task's first run prepare (``_prepare_queued``); other tasks are not looked into."""
    if not isinstance(task, RunBatch) or len(task.tasks) < 2:
        return None
    last = task.tasks[-1]
    return last.uid if hasattr(last.scope, "prepare_queued") else None


def _prepare_queued(worker: Any) -> None:
    """The last run of a batch starts: the first run of the task this worker runs next prepares
    now (a tuning trial samples its parameters, see ``TrialScope.prepare_queued``), as the next run
    of a batch does while the one before it runs; so a task's first trial does not wait for its
    sampling either (measured on Dask: ~4 ms of each task's start). Best effort: it reads the
    worker's queue as Dask holds it (``._compat.next_ready_call``), and does nothing if that is not
    what it expects."""
    call = next_ready_call(worker)
    if call is None or call[0] is not run_on_worker or not call[1] or not isinstance(call[1][0], bytes):
        return
    try:
        following = decode(call[1][0])
    except Exception:  # noqa: BLE001 - not a payload this version of shoal reads: nothing to prepare
        return
    first = following.tasks[0] if isinstance(following, RunBatch) else following
    prepare = getattr(getattr(first, "scope", None), "prepare_queued", None)
    if prepare is not None:
        prepare()


def _execute(task: RunTask | RunBatch, announce: Callable[[str, float], None]) -> RunOutcome | bytes:
    isolate = _shares_process()
    if isinstance(task, RunBatch):
        with older_objects_frozen():  # its many short-lived objects: see ``shoal.gc_freeze``
            return encode_outcome(execute_batch(task, announce, refused=_refused_here, isolate=isolate))
    if _refused_here(task.uid):  # cancelled while it waited on this worker: the user's code must not run
        return never_started(task)
    return execute_registered(task, announce, isolate=isolate)


class StartReports:
    """The start reports of this worker process: a task's first at once, the rest a few at a time.

    Why: one Dask event per run start cost each run a wake-up of the worker's event loop, a
    message through the scheduler and one on the driver's event loop, and a batch of short runs
    starts thousands a second. The first run of a task is announced at once, so the driver knows
    without delay that the task started (it is then stopped where it runs, never dropped, when
    cancelled). Later runs of a batch wait at most ``START_LINGER`` and go with the others of that
    moment in one event. Every event is ``{"worker": address, "starts": [[key, uid, time], ...]}``.
    The starts of a batch that returned before they went out are dropped: its outcomes, which carry
    their start times, are on their way (a batch done within ``START_LINGER`` sends one event).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: set[tuple[Any, str]] = set()  # (worker, task key) of tasks that announced a start
        self._pending: dict[tuple[Any, str], list[list]] = {}  # (worker, task key) -> starts not yet sent
        self._due = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, worker: Any, key: str, uid: str, started: float) -> None:
        start = [key, uid, started]
        with self._lock:
            first = (worker, key) not in self._running
            if first:
                self._running.add((worker, key))
            else:
                self._pending.setdefault((worker, key), []).append(start)
                self._due.set()
                if self._thread is None:
                    self._thread = threading.Thread(target=self._loop, name="shoal-dask-starts", daemon=True)
                    self._thread.start()
        if first:
            _send(worker, [start])

    def task_ended(self, worker: Any, key: str) -> None:
        """The task ``key`` returned: its runs' outcomes are on their way, their starts need not go."""
        with self._lock:
            self._running.discard((worker, key))
            self._pending.pop((worker, key), None)

    def _loop(self) -> None:
        while True:
            self._due.wait()
            time.sleep(START_LINGER)  # let the starts of this moment gather
            with self._lock:
                pending, self._pending = self._pending, {}
                self._due.clear()
            by_worker: dict[Any, list[list]] = {}
            for (worker, _), starts in pending.items():
                by_worker.setdefault(worker, []).extend(starts)
            for worker, starts in by_worker.items():
                _send(worker, starts)


def _send(worker: Any, starts: list[list]) -> None:
    try:
        worker.log_event(START_TOPIC, {"worker": worker.address, "starts": starts})
    except Exception:  # noqa: BLE001 - a worker closing: its runs' outcomes still come
        pass


_start_reports = StartReports()


def _shares_process() -> bool:
    """True when another run may execute in this worker's process at the same time: a worker with
    several threads, several workers in one process, or a client (the driver) in it
    (``processes=False``). Runs that set env then run in a process of their own (``isolate``)."""
    from distributed import Client, Worker, get_worker

    try:
        worker = get_worker()
    except ValueError:
        return True
    return worker.state.nthreads > 1 or len(Worker._instances) > 1 or len(Client._instances) > 0


def _refused_here(uid: str) -> bool:
    """True (once) if run ``uid`` was cancelled before it started on this worker."""
    with _refused_lock:
        if uid in _refused:
            del _refused[uid]
            return True
    return False


# Worker side: runs cancelled before they started here, newest last (bounded: most never arrive).
_refused: dict[str, None] = {}
_refused_lock = threading.Lock()


def cancel_on_worker(uids: list[str]) -> list[str]:
    """Run on every worker by ``client.run``: stop these runs where they run, and refuse to start
    the others here. Dask's own cancel reaches a worker later than this call, by another channel,
    so a task queued on a worker could otherwise start after it was cancelled."""
    stopped = []
    with _refused_lock:
        for uid in uids:
            if stop_attempt(uid):
                stopped.append(uid)
            else:
                _refused[uid] = None
        while len(_refused) > MAX_REFUSED:
            del _refused[next(iter(_refused))]
    return stopped


def dask_setup(worker: Any) -> None:
    """Worker preload of the embedded cluster: ignore SIGINT in worker processes.

    Ctrl-C in a terminal reaches the whole process group; the driver then cancels the runs and
    shuts the cluster down itself. A worker killed by the same signal would turn the runs it was
    executing into "worker lost" failures instead of cancelled runs.
    """
    import signal

    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread of the worker process: leave the default
        pass


__all__ = ["START_TOPIC", "StartReports", "cancel_on_worker", "dask_setup", "run_on_worker"]
