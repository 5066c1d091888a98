"""Sending recorded runs to a backend and recording what comes back: the driver side of dispatch.

``Dispatcher.launch`` sends one run; ``launch_many`` sends many in one submission, or, with
``batch_size="auto"``, probes with one run per slot and sizes the batches of the rest by their
durations (``shoal.batching``). Done-callbacks, on the engine's thread, resubmit failed attempts
while ``retries`` allow and hand final outcomes to the project's Recorder, which resolves the handle.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import functools
import threading
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from . import batching
from .artifacts import Artifact
from .context import to_json_value
from .errors import ShoalError, WorkerLostError
from .execution import RunOutcome, RunTask, error_record, never_started
from .logcapture import tail
from .numpy_params import json_form
from .recorder import unrecordable
from .runs import Run, RunHandle, run_of

if TYPE_CHECKING:  # pragma: no cover
    from shoal.backends.base import Backend, BackendFuture, OnStart

    from .function import Function
    from .project import Project
    from .recorder import Recorder
    from .spec import FunctionSpec


def recordable(params: Mapping[str, Any]) -> dict[str, Any]:
    """Parameters as the database gives them back (plain JSON: NumPy scalars as numbers, NaN as "NaN")."""
    out = {}
    for key, value in params.items():
        ok, converted = to_json_value(value)
        if not ok:  # a NumPy array or pandas scalar: its JSON form (``shoal.numpy_params``)
            ok, converted = json_form(value)
        out[key] = converted if ok else value
    return out


def utc(timestamp: float | None) -> datetime | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, tz=timezone.utc)


class Dispatcher:
    """The sending half of ``shoal.runner.Driver``: turns recorded runs into tasks, submits them
    (batched or not), retries failed attempts and records final outcomes.

    It reads what the driver set up: ``fn``, ``project``, ``backend``, ``spec``, ``recorder`` and
    the per-task fields ``task_env``, ``task_secrets``, ``task_gpus``, ``task_callable``.

    Subclasses (a pipeline's ``StepDriver``) change what happens to a run through three hooks,
    each named for what it decides, and leave the private methods alone:

    - ``shape_task(flight)``: once per run, before its first attempt; may change ``flight.task``.
    - ``submit_attempt(flight, on_start)``: how an attempt reaches the engine; returns its future
      (default: ``backend.submit``). An exception it raises records the attempt as failed. Runs
      that override it are sent one by one, also by ``launch_many``.
    - ``attempt_ended(flight, outcome)``: what an ended attempt means (default:
      ``retry_or_record``). It runs on the thread that settled the future (see ``Backend``): it
      must be short and never wait.

    Hooks act through ``resend(flight)`` (send the current attempt again), ``retry_or_record`` and
    ``record`` (the run's final outcome: recorded, then its handle resolves).
    """

    fn: Function
    project: Project
    backend: Backend
    spec: FunctionSpec
    recorder: Recorder
    task_env: dict[str, str]
    task_secrets: Any
    task_gpus: int
    task_callable: Any

    def launch(
        self,
        record: dict[str, Any],
        inputs: dict[str, Artifact],
        *,
        watch: bool = False,
        scope: Any = None,
        params: dict[str, Any] | None = None,
    ) -> RunHandle:
        """Submit an already recorded run; returns its handle at once.

        ``params`` are the checked values for the handler (default: the recorded ones).
        """
        chosen = params if params is not None else record["params"]
        flight = self._flight(record, _input_records(inputs), params=chosen, watch=watch, scope=scope)
        self.recorder.expect()  # its outcome will come: the recorder batches while more are due
        self.resend(flight)
        return flight.handle

    def launch_many(
        self,
        records: list[dict[str, Any]],
        inputs: dict[str, Artifact],
        params: list[dict[str, Any]],
        *,
        watch: bool = False,
        batch_size: int | str = "auto",
        scopes: list[Any] | None = None,
    ) -> list[RunHandle]:
        """Submit many recorded runs in one go; returns their handles at once.

        Engines take them in one graph update, not N. With ``batch_size="auto"`` short runs travel
        several per engine task (see ``shoal.batching``): one run per slot goes first, and the
        rest follow from a dispatch thread once those show how long a run takes. ``scopes`` gives
        each run its ``RunTask.scope`` (tuning: the run's TrialScope).
        """
        scopes = scopes or [None] * len(records)
        shipped = _input_records(inputs)  # one dict for every run: built and pickled once
        flights = [self._flight(r, shipped, params=p, watch=watch, scope=s) for r, p, s in zip(records, params, scopes)]
        self.recorder.expect(len(flights))  # their outcomes will come: one announcement, not a lock per run
        handles = [f.handle for f in flights]
        if batch_size == 1 or not self.backend.batches:
            self._submit_flights(flights)
        elif batch_size != "auto":
            self._submit_flights(flights, int(batch_size))
        else:
            self._submit_auto(flights)
        return handles

    def _submit_auto(self, flights: list[Flight]) -> None:
        """One run per slot first (the probes), then the rest sized by their durations."""
        slots = max(1, self.backend.slots)  # asks the engine: only where batching may apply
        if not batching.worth_batching(len(flights), slots):
            self._submit_flights(flights)
            return
        probes, rest = flights[:slots], flights[slots:]
        self._submit_flights(probes)
        threading.Thread(
            target=self._dispatch_rest, args=(probes, rest, slots), name="shoal-map-dispatch", daemon=True
        ).start()

    def _dispatch_rest(self, probes: list[Flight], rest: list[Flight], slots: int) -> None:
        """Wait briefly for the probe runs, then send the rest in batches sized by their durations."""
        futures = [f.future for f in probes if f.future is not None]
        try:
            for _ in self.backend.as_completed(futures, timeout=batching.PROBE_WAIT):
                pass
        except TimeoutError:  # slow probes: their durations say the runs are not short
            pass
        durations = []
        for future in futures:
            try:
                outcome = future.result(0) if future.done() else None
            except Exception:  # noqa: BLE001 - a probe that failed in the engine says nothing of durations
                continue
            if outcome is not None and outcome.state in ("completed", "pruned") and outcome.started_at is not None:
                durations.append(outcome.ended_at - outcome.started_at)
        live = []
        for flight in rest:
            if flight.handle.cancel_requested:  # cancelled while the probes ran (Ctrl-C)
                self.record(flight, never_started(flight.task))
            else:
                live.append(flight)
        self._submit_flights(live, batching.batch_size(durations, len(live), slots))

    def _submit_flights(self, flights: list[Flight], size: int = 1) -> None:
        """Hand flights to the engine: all in one submission, or in batches of ``size`` runs."""
        if type(self).submit_attempt is not Dispatcher.submit_attempt:  # a subclass sends each its own way
            for flight in flights:
                self.resend(flight)
            return
        groups = batching.chunks(flights, size) if size > 1 else [flights]
        for group in groups:
            if not group:
                continue
            if size > 1 and len(group) > 1:  # these outcomes arrive together: one arrival, not n
                self.recorder.batched(len(group))
                for flight in group:
                    flight.share = 1 / len(group)
            tasks = [f.task for f in group]
            starts: list[OnStart | None] = [self._on_start(f) for f in group]
            try:
                if size > 1:
                    futures = self.backend.submit_batch(tasks, starts)
                else:
                    futures = self.backend.submit_many(tasks, starts)
            except Exception as exc:  # noqa: BLE001 - the engine refused: record failures, never hang
                for flight in group:
                    self.record(flight, _failed_outcome(flight.task, exc))
                continue
            for flight, future in zip(group, futures):
                self._attach(flight, future)

    def _flight(
        self, record: dict[str, Any], inputs: dict[str, dict], *, params: dict[str, Any], watch: bool, scope: Any
    ) -> Flight:
        """A run's task and handle, built the same way for one run and for a map's many (``inputs``:
        the staged inputs' records, shared by the runs of a map)."""
        task = RunTask(
            uid=record["uid"],
            params=params,
            # Shared by a map's runs, unless a subclass's shape_task may change a run's own.
            inputs=inputs if type(self).shape_task is Dispatcher.shape_task else dict(inputs),
            iteration=record.get("iteration"),
            labels=dict(record.get("labels") or {}),
            echo=watch,
            scope=scope,
            **self._task_fields,
        )
        flight = Flight(task=task, record=record)
        # Partials, not closures: one object per run each (a map's runs are many; see ``shoal.latch``).
        flight.handle = RunHandle(task.uid, self.fn.name, functools.partial(self._cancel, flight))
        self.shape_task(flight)
        return flight

    @functools.cached_property
    def _task_fields(self) -> dict[str, Any]:
        """The fields every task of this driver shares, looked up once (a map makes many tasks)."""
        return {
            "project": self.project.name,
            "function": self.fn.name,
            "function_hash": self.fn.hash,
            "handler": self.fn.handler,
            "code": self.fn.code,
            "artifact_url": self.project.artifacts_url,
            "timeout": self.spec.timeout,
            "env": self.task_env,
            "secrets": self.task_secrets,
            "gpus": self.task_gpus,
            "callable": self.task_callable,
        }

    # -- hooks for subclasses (see the class docstring) ------------------------------------------
    def shape_task(self, flight: Flight) -> None:
        """Change a run's task once, before its first attempt is sent. Default: nothing."""

    def submit_attempt(self, flight: Flight, on_start: OnStart) -> BackendFuture:
        """Hand ``flight.task`` (its current attempt) to the engine; its future."""
        return self.backend.submit(flight.task, on_start)

    def attempt_ended(self, flight: Flight, outcome: RunOutcome) -> None:
        """Decide what an ended attempt means. Default: ``retry_or_record``."""
        self.retry_or_record(flight, outcome)

    # -- what hooks act through -------------------------------------------------------------------
    def resend(self, flight: Flight) -> None:
        """Send the run's current attempt through ``submit_attempt``; an engine that refuses it
        records the run failed (never a hang)."""
        try:
            future = self.submit_attempt(flight, self._on_start(flight))
        except Exception as exc:  # noqa: BLE001 - the engine refused: record a failure, never hang
            self.record(flight, _failed_outcome(flight.task, exc))
            return
        self._attach(flight, future)

    def retry_or_record(self, flight: Flight, outcome: RunOutcome) -> None:
        """Send a failed attempt again while ``retries`` allow (and nobody cancelled the run);
        else record the outcome as the run's."""
        if (
            outcome.state == "failed"
            and flight.task.attempt <= self.spec.retries
            and not flight.handle.cancel_requested
        ):
            flight.earlier_logs.append(outcome.logs)
            flight.task = dataclasses.replace(flight.task, attempt=flight.task.attempt + 1)
            self.resend(flight)
            return
        self.record(flight, outcome)

    def _on_start(self, flight: Flight) -> OnStart:
        return functools.partial(self._started, flight)

    def _started(self, flight: Flight, uid: str, started: float) -> None:
        if flight.started_at is None:
            flight.started_at = started
        if flight.handle.done():  # its start report came after its outcome (short runs): nothing to add
            return
        flight.handle.set_running()
        self.recorder.started(uid, {"state": "running", "started_at": utc(flight.started_at)})

    def _attach(self, flight: Flight, future: BackendFuture) -> None:
        flight.future = future
        if flight.handle.cancel_requested:
            future.cancel()
        future.add_done_callback(functools.partial(self._attempt_done, flight))

    def _attempt_done(self, flight: Flight, future: BackendFuture) -> None:
        self.attempt_ended(flight, _outcome_of(flight.task, future))

    def record(self, flight: Flight, outcome: RunOutcome) -> None:
        """Record ``outcome`` as the run's final one; its handle resolves once it is stored."""
        logs = outcome.logs
        if flight.earlier_logs:
            parts = [f"--- attempt {i + 1} ---\n{text}" for i, text in enumerate(flight.earlier_logs + [logs])]
            logs = tail("\n".join(parts), flight.task.log_limit)
        started = flight.started_at if flight.started_at is not None else outcome.started_at
        fields: dict[str, Any] = {
            "state": outcome.state,
            "results": outcome.results,
            "metrics": outcome.metrics,
            "logs": logs,
            "error": outcome.error,
            "attempts": outcome.attempt,
            "started_at": utc(started),  # the first attempt's start: duration covers the retries
            "ended_at": utc(outcome.ended_at),
        }
        pending = flight.record  # read, not copied: a map records thousands of these
        params, labels = pending["params"], pending["labels"]
        if outcome.params is not None:  # chosen on the worker (a tuning trial's sampled values)
            params = fields["params"] = recordable(outcome.params)
        if outcome.labels:  # set by the handler (ctx.set_label): added to the run's labels
            labels = fields["labels"] = {**labels, **outcome.labels}
        flight.run = run_of(
            {
                "uid": pending["uid"],
                "function": pending["function"],
                "function_hash": pending["function_hash"],
                "state": outcome.state,
                "params": params,
                "inputs": pending["inputs"],
                "results": outcome.results,
                "metrics": outcome.metrics,
                "artifacts": {a["key"]: Artifact.from_record(a) for a in outcome.artifacts}
                if outcome.artifacts
                else {},
                "logs": logs,
                "error": outcome.error,
                "attempts": outcome.attempt,
                "parent": pending.get("parent"),
                "iteration": pending.get("iteration"),
                "backend": pending["backend"],
                "labels": labels,
                "created_at": pending["created_at"],
                "started_at": fields["started_at"],
                "ended_at": fields["ended_at"],
                "cache_key": pending.get("cache_key"),
                "cached_from": None,
            }
        )
        flight.fields = fields
        self.recorder.finished(flight.run.uid, fields, outcome.artifacts, flight.resolve, share=flight.share)

    def _cancel(self, flight: Flight, handle: RunHandle | None = None) -> bool:
        if flight.future is None:
            return True  # cancel_requested is set: _attach cancels as soon as the future exists
        return flight.future.cancel()


@dataclasses.dataclass(eq=False)
class Flight:
    """Driver-side state of one run across its attempts: its current attempt's ``task`` and
    engine ``future``, its pending ``record``, and the ``handle`` its caller holds."""

    task: RunTask
    record: dict[str, Any]
    handle: RunHandle = None  # type: ignore[assignment]
    future: Any = None
    earlier_logs: list[str] = dataclasses.field(default_factory=list)
    started_at: float | None = None  # when the first attempt started
    run: Run | None = None  # the final outcome as recorded (set by ``Dispatcher.record``)
    fields: dict[str, Any] | None = None  # ... and the fields written for it
    # Its part of the engine task its outcome arrives with: 1, or 1/n in a batch of n (``Recorder.batched``).
    share: float = 1.0

    @property
    def created_at(self) -> datetime:
        return self.record["created_at"]

    def resolve(self, problem: Exception | None) -> None:
        """The recorder wrote the outcome (``problem`` None) or could not: resolve the handle with
        the run, or with what the recorder wrote instead (a method, not a closure per run)."""
        run, fields = self.run, self.fields
        assert run is not None and fields is not None, "resolved only after Dispatcher.record"
        if problem is not None:
            run = dataclasses.replace(run, artifacts={}, **unrecordable(fields, problem))
        self.handle.set_run(run)


def _input_records(inputs: dict[str, Artifact]) -> dict[str, dict]:
    return {key: artifact.to_record() for key, artifact in inputs.items()}


def _outcome_of(task: RunTask, future: BackendFuture) -> RunOutcome:
    try:
        return future.result()
    except cf.CancelledError:  # this attempt never started
        return never_started(task)
    except Exception as exc:  # noqa: BLE001 - engine failures become failed outcomes
        return _failed_outcome(task, exc)


def _failed_outcome(task: RunTask, exc: Exception) -> RunOutcome:
    now = datetime.now(timezone.utc).timestamp()
    message = str(exc)
    if isinstance(exc, WorkerLostError):
        message = f"worker lost: {exc}"
    record = error_record(exc, message)
    if isinstance(exc, ShoalError):
        record["type"] = type(exc).__name__
    return RunOutcome(uid=task.uid, state="failed", attempt=task.attempt, started_at=now, ended_at=now, error=record)
