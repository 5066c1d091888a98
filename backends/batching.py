"""Several short runs in one engine task, seen by the driver as one future per run.

An engine runs a ``RunBatch`` as one task (``execute_batch`` on the worker) and returns its
outcomes as a list; ``BatchedRuns`` splits that list back into one ``BackendFuture`` per run, so the
runner records, retries and cancels batched runs as it does single ones. A batch lost with its
worker is split up: runs that had not started go back to the engine one by one (they never ran),
runs that had started fail as worker lost (``retries`` decide).
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from shoal.errors import WorkerLostError
from shoal.execution import RunBatch, RunOutcome, RunTask, error_dict

from .base import BackendFuture, OnStart, SettledFuture

if TYPE_CHECKING:  # pragma: no cover
    from .base import Backend

log = logging.getLogger("shoal.backends")


class BatchedRun(SettledFuture):
    """One run of a batch: resolves when its batch's outcomes arrive (or from a resubmission)."""

    def __init__(self, task: RunTask, batch: BatchedRuns, on_start: OnStart | None):
        super().__init__(task.uid)
        self.task = task
        self.on_start = on_start
        self.started = False
        self.cancel_requested = False
        self._batch = batch
        self._replacement: BackendFuture | None = None

    def adopt(self, future: BackendFuture) -> None:
        """Resolve from ``future`` (this run sent again on its own)."""
        self._replacement = future

        def relay(done: BackendFuture) -> None:
            try:
                self.resolve(done.result())
            except BaseException as exc:  # noqa: BLE001 - handed to whoever asks for the result
                self.resolve(None, exc)

        future.add_done_callback(relay)

    def cancel(self) -> bool:
        if self.done():
            return False
        if self._replacement is not None:
            return self._replacement.cancel()
        return self._batch.cancel_run(self)


class BatchedRuns:
    """One engine task running a batch, and the futures of its runs."""

    def __init__(self, backend: Backend, tasks: list[RunTask], on_start: list[OnStart | None]):
        self.backend = backend
        self.batch = RunBatch(list(tasks))
        self.runs = [BatchedRun(task, self, start) for task, start in zip(tasks, on_start)]
        self._by_uid = {run.uid: run for run in self.runs}
        self._lock = threading.Lock()
        self._engine: BackendFuture | None = None

    def submit(self, submit_task: Callable[[RunBatch, OnStart], BackendFuture]) -> list[BackendFuture]:
        """Hand the batch to the engine (``submit_task``: the backend's own one-task submission)."""
        self._engine = submit_task(self.batch, self._started)
        self._engine.add_done_callback(self._settle)
        return list(self.runs)

    def _started(self, uid: str, started: float) -> None:
        run = self._by_uid.get(uid)
        if run is None:
            return
        run.started = True
        if run.on_start is not None:
            run.on_start(uid, started)

    def cancel_run(self, run: BatchedRun) -> bool:
        """Cancel one run: the whole engine task once every run of it is cancelled (Ctrl-C, close),
        otherwise just this run where the engine can reach it (``stop_batched_run``)."""
        with self._lock:
            run.cancel_requested = True
            everyone = all(r.cancel_requested or r.done() for r in self.runs)
        if everyone and self._engine is not None:
            return self._engine.cancel()
        return self.backend.stop_batched_run(run.uid)

    def _settle(self, engine: BackendFuture) -> None:
        try:
            outcomes: Any = engine.result()
        except WorkerLostError as exc:
            self._split_after_loss(exc)
            return
        except cf.CancelledError as exc:
            for run in self.runs:
                run.resolve(_stopped(run.task) if run.started else None, None if run.started else exc)
            return
        except BaseException as exc:  # noqa: BLE001 - the engine's failure is every run's failure
            for run in self.runs:
                run.resolve(None, exc)
            return
        for run, outcome in zip(self.runs, outcomes):
            run.resolve(outcome, None)

    def _split_after_loss(self, exc: WorkerLostError) -> None:
        for run in self.runs:
            if run.started or run.cancel_requested or getattr(self.backend, "_closed", False):
                run.resolve(None, exc)
                continue
            try:
                run.adopt(self.backend.submit(run.task, run.on_start))
            except Exception as again:  # noqa: BLE001 - cannot resubmit: report the loss
                log.debug("could not resubmit run %s: %s", run.uid, again)
                run.resolve(None, exc)


def _stopped(task: RunTask) -> RunOutcome:
    """A started run of a batch that the engine stopped by force (its outcome never came back)."""
    message = "run was cancelled while running; its batch's worker was stopped"
    return RunOutcome(
        uid=task.uid,
        state="cancelled",
        attempt=task.attempt,
        started_at=None,
        ended_at=time.time(),
        error=error_dict("CancelledError", message),
    )
