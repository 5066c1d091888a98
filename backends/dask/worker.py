"""The worker side of the ``dask`` backend: the task Dask executes, the cancellation that reaches
runs where they run, and the worker preload of the embedded cluster.

Workers import this module (by the reference in each pickled task, and as the preload
``shoal.backends.dask.worker``); it needs ``shoal.execution`` and nothing of the driver side.
"""

from __future__ import annotations

import threading
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

from ..task_codec import decode
from .shipping import with_code

if TYPE_CHECKING:  # pragma: no cover
    from shoal.code import Code

START_TOPIC = "shoal-run-start"  # the Dask event topic of run starts (see ``run_on_worker``)
MAX_REFUSED = 10_000  # cancelled-before-start uids a worker remembers


def run_on_worker(packed: bytes, key: str, code: Code | None = None) -> RunOutcome | list[RunOutcome]:
    """The task Dask executes: one attempt (or a batch of short runs), announcing each start (and
    where) to the driver. The attempt arrives encoded (``shoal.backends.task_codec``); its code,
    when it travels once per function (``.shipping``), arrives as ``code``."""
    task: RunTask | RunBatch = with_code(decode(packed), code)

    def announce(uid: str, started: float) -> None:
        from distributed import get_worker

        try:
            worker = get_worker()
        except ValueError:  # not inside a worker (e.g. client.run): nothing to announce
            return
        worker.log_event(START_TOPIC, {"key": key, "uid": uid, "time": started, "worker": worker.address})

    isolate = _shares_process()
    if isinstance(task, RunBatch):
        return execute_batch(task, announce, refused=_refused_here, isolate=isolate)
    if _refused_here(task.uid):  # cancelled while it waited on this worker: the user's code must not run
        return never_started(task)
    return execute_registered(task, announce, isolate=isolate)


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


__all__ = ["START_TOPIC", "cancel_on_worker", "dask_setup", "run_on_worker"]
