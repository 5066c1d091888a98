"""The driver's handle on one attempt in Dask: a future that submits the attempt again, under a new
key, when its worker died before starting it, so the caller never sees that loss."""

from __future__ import annotations

import concurrent.futures as cf
import logging
from typing import TYPE_CHECKING, Any

from shoal.errors import BackendError, WorkerLostError
from shoal.execution import RunBatch, RunOutcome, RunTask

from ..base import OnStart, SettledFuture
from ..task_codec import decode
from .worker import run_on_worker

if TYPE_CHECKING:  # pragma: no cover
    from .backend import DaskBackend

KEY_PREFIX = "shoal-run-"
MAX_RESUBMITS = 3  # a task lost this often with its worker before starting fails as worker lost

log = logging.getLogger("shoal.backends.dask")


class DaskFuture(SettledFuture):
    """One attempt of one run on Dask; resolves when the attempt has ended.

    It owns its callbacks (rather than handing Dask's future out) so that a task lost with its
    worker before it started can be submitted again under a new key without the caller noticing.
    """

    def __init__(self, task: RunTask | RunBatch, backend: DaskBackend, on_start: OnStart | None):
        super().__init__(task.uid)
        self._task = task
        self._backend = backend
        self._on_start = on_start
        self._future: Any = None
        self._key = ""
        self._submissions = 0
        self._holds_code = False  # its Dask task uses a code future of the backend's (``.shipping``)
        self.started = False
        self.worker = ""
        self.cancel_requested = False

    @property
    def task(self) -> RunTask | RunBatch:
        """The attempt (or batch) this future runs."""
        return self._task

    # -- driving the Dask future (public for subclasses: a pipeline step's ``StepFuture``) ----------
    def launch(self) -> None:
        """Submit the attempt (again, after a loss before it started) under a fresh key."""
        key = self.next_key()
        self.attach(self.submit_to(self._backend.client, key))

    def submit_to(self, client: Any, key: str) -> Any:
        """Submit the attempt's Dask task under ``key`` and return Dask's future. Subclasses submit
        another task (a pipeline step waits for its producers)."""
        future, self._holds_code = self._backend.shipper.submit(
            client, run_on_worker, self._task, key, resources=resources(self._task)
        )
        return future

    def key_for(self, submission: int) -> str:
        """The Dask key of the ``submission``-th submission of this attempt: a new one each time,
        as a resubmission must not reuse the erred one. Subclasses may name keys otherwise."""
        suffix = f"-{submission}" if submission > 1 else ""
        return f"{KEY_PREFIX}{self.uid}-{self._task.attempt}{suffix}"

    def next_key(self) -> str:
        """The key of the next submission, registered with the backend (start events find the
        future by it)."""
        self._submissions += 1
        self._key = self.key_for(self._submissions)
        self._backend._futures[self._key] = self
        return self._key

    def attach(self, future: Any, holds_code: bool | None = None) -> None:
        """Follow Dask's future of the current submission until it is done; ``holds_code``: it uses
        the backend's code future of its function (given back when it settles)."""
        if holds_code is not None:
            self._holds_code = holds_code
        self._future = future
        future.add_done_callback(self._on_dask_done)

    def _announced(self, uid: str, started: float, worker: str) -> None:
        """The start event of this attempt (of one run of this batch) arrived (Dask's event loop
        thread)."""
        self.started, self.worker = True, worker
        if self._on_start is not None:
            self._on_start(uid, started)

    def _on_dask_done(self, future: Any) -> None:
        """Dask's callback thread: hand the finished task to the backend's collector."""
        collector = self._backend._collector
        assert collector is not None, "a future exists only once its backend has started"
        collector.put(self, future)

    def settle(self, future: Any, gathered: Any = None) -> None:
        """Resubmit a task lost before it started; else keep its outcome (``gathered``, when the
        collector fetched it in a batch) or error, release Dask's copy and resolve. Dask's copy
        goes at once so idle workers can be retired, and ``result()`` needs no client later."""
        self._backend._futures.pop(str(future.key), None)
        if self._holds_code:
            self._holds_code = False
            self._backend.shipper.release(self._task.function_hash)
        if self._lost_before_start(future) and self._resubmit(future):
            return
        try:
            value = self._fetch(future) if gathered is None else gathered
            settled: tuple[Any, BaseException | None] = (_unpacked(value), None)
        except BaseException as exc:  # noqa: BLE001 - kept and re-raised by every result() call
            settled = (None, exc)
        future.release()
        self.resolve(*settled)

    def _lost_before_start(self, future: Any) -> bool:
        if future.status != "error" or self.started or self.cancel_requested or self._backend._closed:
            return False
        if self._submissions > MAX_RESUBMITS:
            return False
        from distributed import KilledWorker

        return isinstance(future.exception(), KilledWorker)

    def _resubmit(self, future: Any) -> bool:
        future.release()
        try:
            self.launch()
        except Exception:  # noqa: BLE001 - cannot resubmit (scheduler gone): report the loss instead
            log.debug("could not resubmit run %s", self.uid, exc_info=True)
            return False
        return True

    def _fetch(self, future: Any) -> RunOutcome | bytes:
        from distributed import KilledWorker
        from distributed.client import FutureCancelledError

        try:
            return future.result()
        except FutureCancelledError as exc:
            if self.cancel_requested or self._backend._closed:
                raise cf.CancelledError(f"run {self.uid} was cancelled") from None
            # Nobody here cancelled it: Dask dropped it (e.g. the connection to the scheduler was lost).
            raise BackendError(f"dask dropped run {self.uid} ({exc.reason}): {exc.msg or exc}") from None
        except cf.CancelledError:
            raise
        except KilledWorker as exc:
            if self.cancel_requested and not self.started:
                raise cf.CancelledError(f"run {self.uid} was cancelled") from None
            raise WorkerLostError(f"the dask worker running it died ({exc})") from None
        except Exception as exc:  # noqa: BLE001 - execute() never raises for user code: this is Dask's
            raise BackendError(f"dask failed to run the task: {type(exc).__name__}: {exc}") from exc

    # -- the contract ---------------------------------------------------------------------------
    def cancel(self) -> bool:
        """Stop the attempt where it runs (its outcome, with what it logged, comes back as
        cancelled), or drop it from Dask's queue and from any worker holding it if it has not
        started. A started one is never cancelled in Dask: that would drop an outcome just made."""
        if self.done():
            return False
        self.cancel_requested = True
        uids = list(self._task.uids)
        if not self.started:
            self._backend._remember_cancelled(uids)  # it may be starting right now: see _on_start_event
            self._future.cancel()
        self._backend._cancel_on_workers(uids)
        return True


def _unpacked(value: Any) -> RunOutcome | list[RunOutcome]:
    """What a task returned: a batch's outcomes come encoded (``worker.run_on_worker``)."""
    return decode(value) if isinstance(value, bytes) else value


def resources(task: RunTask | RunBatch) -> dict[str, int] | None:
    """Dask worker resources one run holds (only GPUs: CPU slots are the worker threads)."""
    return {"GPU": task.gpus} if task.gpus else None


__all__ = ["DaskFuture", "KEY_PREFIX", "MAX_RESUBMITS", "resources"]
