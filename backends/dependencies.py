"""Tasks that run after other tasks (pipeline steps), waiting on the driver: the default of
``Backend.submit_after`` for engines that cannot make one task wait for another themselves.

``AfterFuture`` counts its upstream futures down through their done-callbacks (no thread waits),
then asks ``prepare`` for the task to run (or the outcome to end with unrun) and submits it; it
settles with that task's outcome. Dask and Ray wait in the engine instead (their ``dependencies``).
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
from collections.abc import Callable, Sequence

from shoal.execution import RunOutcome, RunTask

from .base import BackendFuture, SettledFuture

#: Turns a task and its upstream outcomes (in order; None where one failed in the engine) into the
#: task to run, or the outcome it ends with unrun. Picklable: engines call it on their workers.
Prepare = Callable[[RunTask, list["RunOutcome | None"]], "RunTask | RunOutcome"]


def outcome_or_none(future: BackendFuture) -> RunOutcome | None:
    """A done future's outcome, or None if it ended with an engine error or was cancelled."""
    try:
        return future.result(0)
    except BaseException:  # noqa: BLE001 - any engine failure means: no outputs to use
        return None


class AfterFuture(SettledFuture):
    """One task submitted once every upstream future is done; cancelling reaches it either way."""

    def __init__(
        self,
        task: RunTask,
        after: Sequence[BackendFuture],
        prepare: Prepare,
        submit: Callable[[RunTask], BackendFuture],
    ):
        super().__init__(task.uid)
        self._task = task
        self._after = list(after)
        self._prepare = prepare
        self._submit = submit
        self._inner: BackendFuture | None = None
        self._cancel_requested = False
        self._waiting = len(self._after)
        self._count_lock = threading.Lock()
        if not self._after:
            self._go()
        for upstream in self._after:
            upstream.add_done_callback(self._upstream_done)

    def _upstream_done(self, _: BackendFuture) -> None:
        with self._count_lock:
            self._waiting -= 1
            last = self._waiting == 0
        if last:
            self._go()

    def _go(self) -> None:
        if self._cancel_requested:
            self.resolve(None, cf.CancelledError(f"run {self.uid} was cancelled"))
            return
        try:
            prepared = self._prepare(self._task, [outcome_or_none(f) for f in self._after])
            if isinstance(prepared, RunOutcome):
                self.resolve(prepared)
                return
            inner = self._inner = self._submit(prepared)
        except Exception as exc:  # noqa: BLE001 - reported as this task's engine failure, never hangs
            self.resolve(None, exc)
            return
        if self._cancel_requested:
            inner.cancel()
        inner.add_done_callback(self._inner_done)

    def _inner_done(self, inner: BackendFuture) -> None:
        try:
            self.resolve(inner.result(0))
        except BaseException as exc:  # noqa: BLE001 - kept and re-raised by result()
            self.resolve(None, exc)

    def cancel(self) -> bool:
        if self.done():
            return False
        self._cancel_requested = True
        inner = self._inner
        if inner is not None:
            return inner.cancel()
        with self._count_lock:
            waiting = self._waiting > 0
        if waiting:  # never submitted: it ends cancelled now
            self.resolve(None, cf.CancelledError(f"run {self.uid} was cancelled before it started"))
        return True


class ReadyFuture(SettledFuture):
    """A future settled from the start: a step whose outputs are known without running (cached),
    as the upstream of others. Nothing to cancel."""

    def __init__(self, outcome: RunOutcome):
        super().__init__(outcome.uid)
        self.resolve(outcome)

    def cancel(self) -> bool:
        return False


__all__ = ["AfterFuture", "Prepare", "ReadyFuture", "outcome_or_none"]
