"""Sending pipeline steps: a ``Driver`` whose runs go to the engine after the steps they use.

Every attempt of a step goes through ``Backend.submit_after`` with its producers' current futures,
so the engine waits (Dask dependencies, Ray ObjectRef arguments; the local pool on the driver) and
the driver never waits step by step. A step whose producers did not all end well is recorded
``upstream_failed`` and never starts. A producer attempt that failed and is being retried makes its
consumer come back unrun; the consumer goes again once the producer's last attempt is known.

It is built on the ``Dispatcher``'s public hooks (``shape_task``, ``submit_attempt``,
``attempt_ended``), never on its private methods.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from shoal.runner import Driver

from .references import USABLE_STATES, ended_unrun, resolve_references

if TYPE_CHECKING:  # pragma: no cover
    from shoal.backends.base import Backend, BackendFuture, OnStart
    from shoal.dispatch import Flight
    from shoal.execution import RunOutcome
    from shoal.function import Function
    from shoal.project import Project
    from shoal.runs import RunHandle

    from .session import PipelineRun


class StepDriver(Driver):
    """The driver of one function's steps within one pipeline run."""

    def __init__(
        self,
        fn: Function,
        project: Project,
        backend: Backend,
        *,
        pipeline: PipelineRun,
        **options: Any,
    ):
        """``pipeline``: the run whose steps these are; ``options`` as ``Driver``'s."""
        super().__init__(fn, project, backend, **options)
        self.pipeline = pipeline
        self._resent: set[str] = set()  # steps sent again once their retried producers completed

    def shape_task(self, flight: Flight) -> None:
        """The step's task also carries the inputs that are references (resolved where it runs)."""
        step = self.pipeline.steps[flight.task.uid]
        flight.task.inputs.update(step.ref_inputs)
        step.handle = flight.handle

    def submit_attempt(self, flight: Flight, on_start: OnStart) -> BackendFuture:
        """After the producers' current attempts; the future is what later consumers wait on."""
        step = self.pipeline.steps[flight.task.uid]
        after = [self.pipeline.launched(uid).future for uid in step.producers]
        future = self.backend.submit_after(flight.task, after, resolve_references, on_start)
        step.future = future
        return future

    def attempt_ended(self, flight: Flight, outcome: RunOutcome) -> None:
        step = self.pipeline.steps[flight.task.uid]
        if outcome.state in USABLE_STATES or not step.producers or flight.handle.cancel_requested:
            self.retry_or_record(flight, outcome)
            return
        # Ended unrun or failed with producers: the producers' final runs decide what it was.
        producers = [self.pipeline.launched(uid).handle for uid in step.producers]
        _when_all_done(producers, lambda: self._after_producers(flight, outcome, producers))

    def _after_producers(self, flight: Flight, outcome: RunOutcome, producers: list[RunHandle]) -> None:
        failed = [handle for handle in producers if not handle.result(0).ok]
        if failed:
            names = ", ".join(f"{self.pipeline.steps[h.uid].name} {h.state}" for h in failed)
            message = f"not started: a step it depends on did not complete ({names})"
            self.record(flight, ended_unrun(flight.task, "upstream_failed", "UpstreamFailed", message))
        elif outcome.state == "upstream_failed" and flight.task.uid not in self._resent:
            self._resent.add(flight.task.uid)  # it saw a failed attempt of a producer retried since
            self.resend(flight)
        else:
            self.retry_or_record(flight, outcome)


def _when_all_done(handles: list[RunHandle], then: Any) -> None:
    """Call ``then()`` once every handle is done (on the thread finishing the last one)."""
    remaining = [len(handles)]
    lock = threading.Lock()

    def one_done(_: RunHandle) -> None:
        with lock:
            remaining[0] -= 1
            last = remaining[0] == 0
        if last:
            then()

    for handle in handles:
        handle.add_done_callback(one_done)
