"""Pipeline steps on Dask: a step's task has its producers' Dask futures as dependencies, so the
scheduler starts it once they are done and hands it their outcomes; the driver does not wait.

Each step's attempt keeps a second Dask future of its own key (``keeper``): the backend releases
the first as soon as the outcome is fetched, and the keeper holds the outcome in the cluster for
the steps that use it until the step's future is dropped (the pipeline run ends).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from shoal.execution import RunOutcome, RunTask

from ..base import BackendFuture, OnStart
from ..dependencies import AfterFuture, Prepare, outcome_or_none
from ..task_codec import decode, encode
from .future import KEY_PREFIX, DaskFuture, resources
from .shipping import SUBMISSION_ORDER
from .worker import run_on_worker

if TYPE_CHECKING:  # pragma: no cover
    from .backend import DaskBackend

_serials = itertools.count(1)


def run_after(packed: bytes, key: str, prepare: Prepare, *upstream: Any) -> RunOutcome | bytes:
    """The task Dask executes for a step: its producers' outcomes arrive as arguments (Dask
    resolved their futures); ``prepare`` swaps the references, or ends the step unrun."""
    task: RunTask = decode(packed)
    outcomes = [value if isinstance(value, RunOutcome) else None for value in upstream]
    prepared = prepare(task, outcomes)
    if isinstance(prepared, RunOutcome):
        return prepared
    return run_on_worker(encode(prepared), key)


class StepFuture(DaskFuture):
    """One attempt of a step: submitted with its producers as dependencies, its outcome kept."""

    def __init__(
        self,
        task: RunTask,
        backend: DaskBackend,
        on_start: OnStart | None,
        after: Sequence[BackendFuture],
        prepare: Prepare,
    ):
        super().__init__(task, backend, on_start)
        self._after = list(after)
        self._prepare = prepare
        self.keeper: Any = None

    def submit_to(self, client: Any, key: str) -> Any:
        """``run_after`` with the producers as dependencies; a second future of the same key keeps
        the outcome in the cluster for the steps that use it."""
        from distributed import Future

        upstream = [_upstream(dep) for dep in self._after]
        future = client.submit(
            run_after,
            encode(self.task),
            key,
            self._prepare,
            *upstream,
            key=key,
            pure=False,
            fifo_timeout=SUBMISSION_ORDER,  # steps ready together start in submission order
            resources=resources(self.task),
        )
        self.keeper = Future(future.key, client)
        return future

    def key_for(self, submission: int) -> str:
        """A key no earlier submission of this step used: a step sent again after its producer's
        retry must not meet the outcome its first submission left under the same key."""
        return f"{KEY_PREFIX}{self.uid}-{self.task.attempt}-step{next(_serials)}"


def _upstream(dep: BackendFuture) -> Any:
    """The Dask future of a producer still running (a dependency), or its known outcome."""
    keeper = getattr(dep, "keeper", None)
    if keeper is not None:
        return keeper
    return outcome_or_none(dep)


def submit_after(
    backend: DaskBackend,
    task: RunTask,
    after: Sequence[BackendFuture],
    prepare: Prepare,
    on_start: OnStart | None,
) -> BackendFuture:
    """``Backend.submit_after`` on Dask: in the scheduler when every producer is a step of this
    cluster or already done; otherwise (a producer waiting for another driver) on the driver."""
    if all(getattr(dep, "keeper", None) is not None or dep.done() for dep in after):
        backend.start()
        future = StepFuture(task, backend, on_start, after, prepare)
        future.launch()
        return future
    return AfterFuture(task, after, prepare, lambda prepared: backend.submit(prepared, on_start))


__all__ = ["StepFuture", "run_after", "submit_after"]
