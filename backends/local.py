"""The ``local`` backend: runs in the calling process, on a small pool of threads.

It is the reference for the other backends: same outcomes, same records. Concurrency is bounded by
the function's ``replicas.max`` (one task per thread); running tasks are stopped (timeout, cancel)
by raising an exception in their thread.
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
from typing import Callable

from shoal.errors import BackendError, RunCancelledError
from shoal.execution import RunOutcome, RunTask, async_raise, execute

from .base import Backend, BackendFuture, OnStart, WorkerInfo


class LocalFuture(BackendFuture):
    def __init__(self, uid: str, future: cf.Future, backend: "LocalBackend"):
        self.uid = uid
        self._future = future
        self._backend = backend

    def done(self) -> bool:
        return self._future.done()

    def result(self, timeout: float | None = None) -> RunOutcome:
        try:
            return self._future.result(timeout)
        except cf.TimeoutError:
            raise TimeoutError(f"run {self.uid} not done within {timeout} s") from None

    def cancel(self) -> bool:
        if self._future.cancel():
            return True
        return self._backend._interrupt(self.uid)

    def add_done_callback(self, callback: Callable[[BackendFuture], None]) -> None:
        self._future.add_done_callback(lambda _: callback(self))


class LocalBackend(Backend):
    """Threads of the calling process; ``n_workers`` threads at most (default: the function's max)."""

    name = "local"
    remote = False

    def __init__(self, n_workers: int | None = None, **options):
        if options:
            raise BackendError(f"unknown option {sorted(options)[0]!r} for the local backend; it takes n_workers")
        if n_workers is not None and n_workers < 1:
            raise BackendError("n_workers must be at least 1 for the local backend")
        self._max = n_workers or 1
        self._min = 0
        self._fixed = n_workers is not None
        self._pool: cf.ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._running: dict[str, int] = {}  # uid -> thread ident
        self._closed = False

    def _executor(self) -> cf.ThreadPoolExecutor:
        with self._lock:
            if self._closed:
                raise BackendError("this local backend is closed; create a new one")
            if self._pool is None:
                self._pool = cf.ThreadPoolExecutor(self._max, thread_name_prefix="shoal-local")
            return self._pool

    def submit(self, task: RunTask, on_start: OnStart | None = None) -> BackendFuture:
        future = self._executor().submit(self._run, task, on_start)
        return LocalFuture(task.uid, future, self)

    def _run(self, task: RunTask, on_start: OnStart | None) -> RunOutcome:
        with self._lock:
            self._running[task.uid] = threading.get_ident()
        try:
            return execute(task, on_start)
        finally:
            with self._lock:
                self._running.pop(task.uid, None)

    def _interrupt(self, uid: str) -> bool:
        with self._lock:
            ident = self._running.get(uid)
            return ident is not None and async_raise(ident, RunCancelledError)

    def scale(self, n: int) -> None:
        if n < 1:
            raise BackendError("the local backend needs at least one thread")
        self._resize(n, n, "scale")

    def adapt(self, minimum: int, maximum: int) -> None:
        # Threads are created on demand up to the maximum; that is the executor's own elasticity.
        if not self._fixed:
            self._resize(minimum, max(1, maximum), "adapt")

    def _resize(self, minimum: int, maximum: int, reason: str) -> None:
        with self._lock:
            before, self._min, self._max = self._max, minimum, maximum
            old, self._pool = (self._pool, None) if maximum != before else (None, self._pool)
        if old is not None:
            old.shutdown(wait=False)  # queued and running tasks finish on the old threads
            self._record_event(before, maximum, f"{reason} to {maximum} threads")

    def workers(self) -> list[WorkerInfo]:
        with self._lock:
            running = list(self._running)
            pool = self._pool
        threads = len(getattr(pool, "_threads", ())) if pool else 0
        infos = []
        for index in range(threads):
            uid = running[index] if index < len(running) else None
            infos.append(
                WorkerInfo(
                    name=f"shoal-local-{index}",
                    address="local",
                    state="busy" if uid else "idle",
                    running=(uid,) if uid else (),
                )
            )
        return infos

    @property
    def slots(self) -> int:
        return self._max

    def close(self) -> None:
        with self._lock:
            self._closed, pool, self._pool = True, self._pool, None
            running = list(self._running.values())
        for ident in running:
            async_raise(ident, RunCancelledError)
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
