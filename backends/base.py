"""The backend contract every execution engine implements (local, Dask, Ray).

A backend starts or connects to an engine, submits ``RunTask``s and hands back futures of
``RunOutcome``s, scales or adapts its workers between bounds with the engine's own mechanism, reports
its workers, and closes leaving no process behind. Recording runs is the driver's job, not the
backend's: backends only move tasks and outcomes.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from shoal.errors import BackendError, ScalingError
from shoal.execution import RunOutcome, RunTask
from shoal.latch import Latch

if TYPE_CHECKING:  # pragma: no cover
    from shoal.function import Function
    from shoal.project import Project
    from shoal.spec import Replicas

    from .dependencies import Prepare

OnStart = Callable[[str, float], None]
log = logging.getLogger("shoal.backends")


@dataclass(frozen=True)
class WorkerInfo:
    """One worker as the engine reports it."""

    name: str
    address: str
    state: str  # idle, busy, starting, closing
    slots: int = 1
    running: tuple[str, ...] = ()
    resources: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ScalingEvent:
    """A change in the number of workers, with when and why."""

    time: float
    direction: str  # up or down
    workers_before: int
    workers_after: int
    reason: str


class BackendFuture(ABC):
    """The engine's handle on one submitted task."""

    uid: str

    @abstractmethod
    def done(self) -> bool: ...

    @abstractmethod
    def result(self, timeout: float | None = None) -> RunOutcome:
        """The outcome; raises ``concurrent.futures.CancelledError`` if cancelled before it started,
        ``WorkerLostError`` if the worker died, ``BackendError`` for other engine failures."""

    @abstractmethod
    def cancel(self) -> bool:
        """Cancel a pending task, or stop a running one; True if the request was delivered."""

    @abstractmethod
    def add_done_callback(self, callback: Callable[[BackendFuture], None]) -> None:
        """Call ``callback(self)`` once the future is done (possibly in another thread)."""


class SettledFuture(BackendFuture):
    """A BackendFuture settled once, from an engine's thread, with an outcome or an error; its
    callbacks run on the thread that settles it (or at once when added later)."""

    def __init__(self, uid: str):
        self.uid = uid
        self._lock = threading.Lock()
        self._done = Latch()  # an Event only once someone waits (``shoal.latch``)
        self._callbacks: list[Callable[[BackendFuture], None]] = []
        self._settled: tuple[RunOutcome | None, BaseException | None] | None = None

    def resolve(self, outcome: RunOutcome | None, error: BaseException | None = None) -> None:
        """Settle the future with ``outcome`` or ``error`` (for the engine code that drives it: a
        subclass, a backend, a batch); only the first call counts."""
        with self._lock:
            if self._done.is_set():
                return
            self._settled = (outcome, error)
            self._done.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            self._call(callback)

    def _call(self, callback: Callable[[BackendFuture], None]) -> None:
        try:
            callback(self)
        except Exception:  # noqa: BLE001 - as concurrent.futures: a failing callback is logged
            log.exception("a done callback of run %s failed", self.uid)

    def done(self) -> bool:
        return self._done.is_set()

    def result(self, timeout: float | None = None) -> RunOutcome:
        if not self._done.wait(timeout):
            raise TimeoutError(f"run {self.uid} not done within {timeout} s")
        outcome, error = self._settled  # type: ignore[misc]
        if error is not None:
            raise error
        return outcome  # type: ignore[return-value]

    def add_done_callback(self, callback: Callable[[BackendFuture], None]) -> None:
        with self._lock:
            if not self._done.is_set():
                self._callbacks.append(callback)
                return
        self._call(callback)


class Backend(ABC):
    """Base class of execution backends; usable as a context manager.

    Engines implement ``submit``, ``workers``, ``slots``, ``close`` and the scaling hooks
    ``_scale``/``_adapt``; the public ``scale``/``adapt`` check their bounds here, once, for all.

    Threads (what every engine guarantees, and what callers may rely on):

    - ``start``, ``submit``, ``submit_many``, ``submit_batch``, ``scale``, ``adapt``, ``workers``,
      ``slots`` and ``close`` may be called from any thread, including from a done-callback (the
      runner resubmits a failed attempt from there). ``start`` is idempotent and ``submit`` starts
      the engine implicitly; ``close`` is idempotent, and a closed backend is not restarted: later
      submissions raise ``BackendError``.
    - A future belongs to the caller of ``submit``: only it asks for the ``result``, cancels it
      or adds callbacks. The backend keeps it only until it settles, and ``close`` settles every
      one still outstanding (queued ones dropped, running ones stopped: both end cancelled), so
      no future is left hanging.
    - Done-callbacks run once, on the thread that settles the future: normally an engine thread
      (the local pool's thread that ran the task, the Dask backend's collector thread, Ray's
      completion thread); for a task dropped before it started, the thread that called
      ``cancel`` or ``close``. A callback added to a future already done runs at once, in the
      thread adding it. Callbacks must be short (one engine thread settles many futures) and
      must not wait for another future; an exception they raise is logged, not propagated.
    - ``on_start(uid, time)`` runs on an engine thread too (the local pool's thread, Dask's
      event loop, the Ray start pipe's reader), at most once per attempt. Start reports and
      outcomes travel apart, so it may come after the future settled, or never (a task dropped
      before it started); callers rely on neither order.
    """

    name: ClassVar[str]
    #: True when tasks run in the calling process (the live callable is used, nothing is pickled).
    in_process: ClassVar[bool] = False
    #: True when ``submit_batch`` ships several runs in one engine task (worth it for short runs).
    batches: ClassVar[bool] = False
    #: True when a worker lets the first run of the task queued behind a batch prepare while the
    #: batch's last run runs (a tuning trial samples early; see ``TrialScope.prepare_queued``).
    prepares_queued: ClassVar[bool] = False

    @property
    def remote(self) -> bool:
        """True when workers may run on other machines (so local-only files cannot be shared)."""
        return False

    def ensure_requirements(self, requirements: tuple[str, ...]) -> None:
        """Make sure workers can import what a function needs, before its first run.

        The default checks the driver's own environment, which embedded engines' workers share;
        engines that can install packages (Ray ``runtime_env``, Dask worker plugins) override it.
        """
        from shoal.requirements import missing_requirements

        missing = missing_requirements(requirements)
        if missing:
            raise BackendError(
                f"requirements missing on the {self.name} workers: {', '.join(missing)}; "
                f"install them (pip install {' '.join(m.split(' (')[0] for m in missing)})"
                + (" or pass install_requirements=True to the backend" if self.can_install else "")
            )

    def ensure_gpus(self, gpus: int, function: str) -> None:  # noqa: B027 - an optional hook, no-op by default
        """Refuse, before any run is recorded, a function whose runs need more GPUs than the engine
        can ever offer (its runs would wait forever). In-process runs use the caller's devices, so
        the default accepts any count."""

    #: True when the backend can install requirements on its workers (``install_requirements=True``).
    can_install: ClassVar[bool] = False
    #: True when the engine's workers get secret values from the platform (Kubernetes pods'
    #: ``secretKeyRef``), so the driver does not resolve the function's secret references itself.
    pod_secrets: ClassVar[bool] = False

    def start(self) -> Backend:
        """Start or connect to the engine (idempotent). Submitting starts it implicitly."""
        return self

    @abstractmethod
    def submit(self, task: RunTask, on_start: OnStart | None = None) -> BackendFuture:
        """Queue one task; ``on_start(uid, time)`` is called when it starts, where the engine tells."""

    def submit_many(self, tasks: list[RunTask], on_start: list[OnStart | None] | None = None) -> list[BackendFuture]:
        """Queue many tasks at once; engines override this to batch them (one graph update, not N)."""
        starts = on_start if on_start is not None else [None] * len(tasks)
        return [self.submit(task, start) for task, start in zip(tasks, starts)]

    def submit_batch(self, tasks: list[RunTask], on_start: list[OnStart | None] | None = None) -> list[BackendFuture]:
        """Queue several short runs of one function as one engine task, one future per run (see
        ``shoal.backends.batching``). The default queues them one by one: in-process runs pay no
        per-task cost worth saving."""
        return self.submit_many(tasks, on_start)

    def submit_after(
        self,
        task: RunTask,
        after: Sequence[BackendFuture],
        prepare: Prepare,
        on_start: OnStart | None = None,
    ) -> BackendFuture:
        """Queue ``task`` to run once every future in ``after`` is done (a pipeline step after the
        steps it uses). Where the task runs, ``prepare(task, outcomes)`` gets their outcomes in
        order (None for one that failed in the engine) and returns the task to run or the
        ``RunOutcome`` it ends with unrun. Engines that can wait themselves override this (Dask: the
        upstream futures are the task's dependencies; Ray: their ObjectRefs its arguments); this
        default waits here, on the driver, through done-callbacks (``shoal.backends.dependencies``)."""
        from .dependencies import AfterFuture

        return AfterFuture(task, after, prepare, lambda prepared: self.submit(prepared, on_start))

    def stop_batched_run(self, uid: str) -> bool:
        """Stop one run of a batch whose other runs go on; False where the engine cannot reach a
        single run inside a task (it then ends as it would have)."""
        return False

    def as_completed(self, futures: Iterable[BackendFuture], timeout: float | None = None) -> Iterator[BackendFuture]:
        """Yield futures as they finish (any order); TimeoutError if they are not all done within
        ``timeout`` seconds of the call (as ``concurrent.futures.as_completed``)."""
        pending = list({id(future): future for future in futures}.values())
        done: queue.Queue[BackendFuture] = queue.Queue()
        for future in pending:
            future.add_done_callback(done.put)
        end = None if timeout is None else time.monotonic() + timeout
        for count in range(len(pending)):
            try:
                yield done.get(timeout=None if end is None else max(0.0, end - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(
                    f"{len(pending) - count} of {len(pending)} futures not done within {timeout} s"
                ) from None

    #: The fewest workers ``scale`` takes: 0 where the engine can hold none and grow again later
    #: (Dask retires every worker), 1 where a pool of none could never run anything (local threads).
    min_scale: ClassVar[int] = 0

    def scale(self, n: int) -> None:
        """Fix the number of workers at ``n`` (a whole number, at least ``min_scale``)."""
        if not _whole(n) or n < self.min_scale:
            raise ScalingError(
                f"scale(n) needs a whole number n >= {self.min_scale} of workers for the {self.name} backend, "
                f"got {n!r}; pass e.g. scale({max(1, self.min_scale)})"
            )
        self._scale(n)

    def adapt(self, minimum: int, maximum: int) -> None:
        """Let the engine keep between ``minimum`` and ``maximum`` workers (whole numbers,
        0 <= minimum <= maximum, maximum >= 1; equal bounds fix the size)."""
        if not (_whole(minimum) and _whole(maximum)) or minimum < 0 or maximum < max(minimum, 1):
            raise ScalingError(
                f"adapt(minimum, maximum) needs whole numbers with 0 <= minimum <= maximum and maximum >= 1, "
                f"got ({minimum!r}, {maximum!r}); pass e.g. adapt(0, 4)"
            )
        self._adapt(minimum, maximum)

    @abstractmethod
    def _scale(self, n: int) -> None:
        """The engine's way to fix the number of workers; ``n`` is already checked."""

    @abstractmethod
    def _adapt(self, minimum: int, maximum: int) -> None:
        """The engine's autoscaling between bounds already checked."""

    @classmethod
    def for_function(cls, name: str, fn: Function, project: Project | None) -> Backend:
        """The backend ``fn.run(backend=name)`` uses: by default the process-wide one for ``name``
        (``shoal.backends.shared``), adapted to the function's replicas. Engines whose workers are
        made for one function (the Kubernetes launchers) override it."""
        from shoal.backends import shared

        backend = shared(name)
        backend.fit_replicas(fn.replicas)
        return backend

    def fit_replicas(self, replicas: Replicas | None) -> None:
        """Adapt to a function's replicas; a function that sets none gets every slot there is
        (``full_size``), or the engine as it is when that is None."""
        if replicas is not None:
            self.adapt(replicas.min, replicas.max)
            return
        size = self.full_size()
        if size is not None:
            self.adapt(size, size)

    def full_size(self) -> int | None:
        """Workers that fill what this backend has, for functions that set no replicas: one per
        core of this machine for an engine it runs itself (as the engines size themselves by
        default); None for a cluster it joined, whose size its operator decides."""
        return None if self.remote else max(1, os.cpu_count() or 1)

    @abstractmethod
    def workers(self) -> list[WorkerInfo]:
        """The current workers."""

    def scaling_events(self) -> list[ScalingEvent]:
        """Recorded changes of the worker count, oldest first."""
        return list(getattr(self, "_events", ()))

    @property
    @abstractmethod
    def slots(self) -> int:
        """How many tasks may run at once right now, at the current upper bound."""

    @abstractmethod
    def close(self) -> None:
        """Stop everything this backend started; idempotent."""

    def _record_event(self, before: int, after: int, reason: str) -> None:
        """Keep a scaling event (the project's recorder persists and logs it)."""
        if before == after:
            return
        event = ScalingEvent(time.time(), "up" if after > before else "down", before, after, reason)
        events = self.__dict__.setdefault("_events", [])
        events.append(event)
        del events[:-1000]

    def __enter__(self) -> Backend:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.close()


def _whole(value: object) -> bool:
    """An int that is not a bool (``True`` is not one worker)."""
    return isinstance(value, int) and not isinstance(value, bool)
