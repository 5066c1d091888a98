"""The ``local`` backend: runs in the calling process, on a small pool of threads.

It is the reference for the other backends: same outcomes, same records. Concurrency is bounded by
the function's ``replicas.max``, or the machine's cores when it sets none (one task per thread);
running tasks are stopped (timeout, cancel) through a StopSignal (see ``shoal.execution``): an
exception raised in the handler's thread, and for runs with a timeout a supervising thread that
ends the run even if the handler is blocked.

A run whose ``env`` (or secrets) would change the process's environment runs in a child process of
its own instead (``shoal.isolation``; an idle one is kept for the next run with the same env):
``os.environ`` is shared by every thread, so two runs setting the same variable in threads would see
each other's values, and so would the driver.
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
from collections.abc import Callable

from shoal.errors import BackendError
from shoal.execution import RunOutcome, RunTask, StopSignal, execute
from shoal.isolation import ChildPool

from .base import Backend, BackendFuture, OnStart, WorkerInfo


class LocalFuture(BackendFuture):
    def __init__(self, uid: str, future: cf.Future, stop: StopSignal):
        self.uid = uid
        self._future = future
        self._stop = stop

    def done(self) -> bool:
        return self._future.done()

    def result(self, timeout: float | None = None) -> RunOutcome:
        try:
            return self._future.result(timeout)
        except cf.TimeoutError:
            raise TimeoutError(f"run {self.uid} not done within {timeout} s") from None

    def cancel(self) -> bool:
        """Drop the task if it has not started; otherwise ask it to stop (it ends as cancelled)."""
        if self._future.cancel():
            return True
        if self._future.done():
            return False
        self._stop.set()
        return True

    def add_done_callback(self, callback: Callable[[BackendFuture], None]) -> None:
        self._future.add_done_callback(lambda _: callback(self))


class LocalBackend(Backend):
    """Threads of the calling process: at most ``n_workers`` runs at once (default 1; the runner
    adapts the shared backend to each function's ``replicas.max``, or to the machine's cores).

    There is one thread pool per size: changing the bound sends new tasks to a pool of the new size
    while earlier tasks finish on theirs, and two callers adapting to the same size share one pool,
    so runs of one function never exceed its maximum together.
    """

    name = "local"
    in_process = True
    min_scale = 1  # a pool of no thread would never run a task

    def __init__(self, n_workers: int | None = None, **options):
        if options:
            raise BackendError(f"unknown option {sorted(options)[0]!r} for the local backend; it takes n_workers")
        if n_workers is not None and (isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < 1):
            raise BackendError(
                f"n_workers must be a whole number of at least 1 for the local backend, got {n_workers!r}"
            )
        self._max = n_workers or 1
        self._min = 0
        self._pools: dict[int, cf.ThreadPoolExecutor] = {}  # size -> pool
        self._lock = threading.Lock()
        self._running: dict[str, StopSignal] = {}  # uid -> how to stop it
        self._children = ChildPool()  # processes of runs that set env, kept for the next one
        self._closed = False

    def _executor(self) -> cf.ThreadPoolExecutor:
        with self._lock:
            if self._closed:
                raise BackendError("this local backend is closed; create a new one")
            pool = self._pools.get(self._max)
            if pool is None:
                pool = self._pools[self._max] = cf.ThreadPoolExecutor(self._max, thread_name_prefix="shoal-local")
            return pool

    def submit(self, task: RunTask, on_start: OnStart | None = None) -> BackendFuture:
        stop = StopSignal()
        future = self._executor().submit(self._run, task, on_start, stop)
        return LocalFuture(task.uid, future, stop)

    def _run(self, task: RunTask, on_start: OnStart | None, stop: StopSignal) -> RunOutcome:
        with self._lock:
            self._running[task.uid] = stop
            if self._closed:  # picked up while close() was stopping the others
                stop.set()
        try:
            return execute(task, on_start, stop, isolate=True, children=self._children)
        finally:
            with self._lock:
                self._running.pop(task.uid, None)

    def _scale(self, n: int) -> None:
        self._resize(n, n, "scale")

    def _adapt(self, minimum: int, maximum: int) -> None:
        """Threads are created on demand up to ``maximum`` (the executor's own elasticity)."""
        self._resize(minimum, maximum, "adapt")

    def _resize(self, minimum: int, maximum: int, reason: str) -> None:
        with self._lock:
            before, self._min, self._max = self._max, minimum, maximum
        self._record_event(before, maximum, f"{reason} to {maximum} threads")

    def workers(self) -> list[WorkerInfo]:
        """One entry per thread: busy ones with the run they execute, then idle ones."""
        with self._lock:
            running = list(self._running)
            pool = self._pools.get(self._max)
        threads = len(getattr(pool, "_threads", ())) if pool else 0
        busy = [
            WorkerInfo(name=f"shoal-local-{i}", address="local", state="busy", running=(uid,))
            for i, uid in enumerate(running)
        ]
        idle = [
            WorkerInfo(name=f"shoal-local-{i}", address="local", state="idle")
            for i in range(len(busy), max(threads, len(busy)))
        ]
        return busy + idle

    @property
    def slots(self) -> int:
        return self._max

    def close(self) -> None:
        """Drop queued tasks, stop running ones (they end as cancelled) and wait for the threads.

        A handler blocked in one long call without a timeout stops only when that call returns.
        """
        with self._lock:
            self._closed, pools, self._pools = True, list(self._pools.values()), {}
            running = list(self._running.values())
        for pool in pools:
            pool.shutdown(wait=False, cancel_futures=True)  # queued tasks end as cancelled
        for stop in running:
            stop.set()
        for pool in pools:
            pool.shutdown(wait=True)
        self._children.close()
