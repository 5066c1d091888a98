"""Sending pipeline steps: a ``Driver`` whose runs go to the engine after the steps they use.

Every attempt of a step goes through ``Backend.submit_after`` with its producers' current futures,
so the engine waits (Dask dependencies, Ray ObjectRef arguments; the local pool on the driver) and
the driver never waits step by step. A step whose producers did not all end well is recorded
``upstream_failed`` and never starts. A producer attempt that failed and is being retried makes its
consumer come back unrun; the consumer goes again once the producer's last attempt is known.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from shoal.dispatch import _Flight, _outcome_of
from shoal.runner import Driver

from .references import USABLE_STATES, ended_unrun, resolve_references

if TYPE_CHECKING:  # pragma: no cover
    from shoal.backends.base import BackendFuture
    from shoal.runs import RunHandle

    from .session import PipelineRun


class StepDriver(Driver):
    """The driver of one function's steps within one pipeline run."""

    pipeline: "PipelineRun"
    _resent: set[str]  # steps sent again once their retried producers completed

    def _flight(self, record: dict[str, Any], inputs: Any, **options: Any) -> _Flight:
        """The step's task also carries the inputs that are references (resolved where it runs)."""
        flight = super()._flight(record, inputs, **options)
        step = self.pipeline.steps[record["uid"]]
        flight.task.inputs.update(step.ref_inputs)
        step.handle = flight.handle
        return flight

    def _submit(self, flight: _Flight) -> None:
        step = self.pipeline.steps[flight.task.uid]
        after = [self.pipeline.launched(uid).future for uid in step.producers]
        try:
            future = self.backend.submit_after(flight.task, after, resolve_references, self._on_start(flight))
        except Exception as exc:  # noqa: BLE001 - the engine refused: record a failure, never hang
            from shoal.dispatch import _failed_outcome

            self._record(flight, _failed_outcome(flight.task, exc))
            return
        self._attach(flight, future)

    def _attach(self, flight: _Flight, future: "BackendFuture") -> None:
        self.pipeline.steps[flight.task.uid].future = future  # what later consumers wait on
        super()._attach(flight, future)

    def _on_done(self, flight: _Flight, future: "BackendFuture") -> None:
        outcome = _outcome_of(flight.task, future)
        step = self.pipeline.steps[flight.task.uid]
        if outcome.state in USABLE_STATES or not step.producers or flight.handle.cancel_requested:
            super()._on_done(flight, future)
            return
        # Ended unrun or failed with producers: the producers' final runs decide what it was.
        producers = [self.pipeline.launched(uid).handle for uid in step.producers]
        _when_all_done(producers, lambda: self._after_producers(flight, future, producers))

    def _after_producers(self, flight: _Flight, future: "BackendFuture", producers: list["RunHandle"]) -> None:
        failed = [handle for handle in producers if not handle.result(0).ok]
        if failed:
            names = ", ".join(f"{self.pipeline.steps[h.uid].name} {h.state}" for h in failed)
            message = f"not started: a step it depends on did not complete ({names})"
            self._record(flight, ended_unrun(flight.task, "upstream_failed", "UpstreamFailed", message))
        elif _outcome_of(flight.task, future).state == "upstream_failed" and flight.task.uid not in self._resent:
            self._resent.add(flight.task.uid)  # it saw a failed attempt of a producer retried since
            self._submit(flight)
        else:
            super()._on_done(flight, future)


def _when_all_done(handles: list["RunHandle"], then: Any) -> None:
    """Call ``then()`` once every handle is done (on the thread finishing the last one)."""
    remaining = [len(handles)]
    lock = threading.Lock()

    def one_done(_: "RunHandle") -> None:
        with lock:
            remaining[0] -= 1
            last = remaining[0] == 0
        if last:
            then()

    for handle in handles:
        handle.add_done_callback(one_done)
