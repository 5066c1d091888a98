"""``shoal.Run`` (a recorded execution) and ``shoal.RunHandle`` (a run in flight)."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any

from .artifacts import Artifact
from .errors import RunFailedError, RunTimeoutError
from .latch import Latch


class RunState(str, Enum):
    """Where a run is. ``pruned``: a tuning trial stopped early by its search's pruner (the handler
    raised ``optuna.TrialPruned``, or ``ctx.report`` decided so); as in Optuna, a normal end, not a
    failure: it is never retried and ``raise_for_state`` lets it pass. ``cached``: not run, because a
    completed run with the same cache key was found (``cached_from`` names it, its outputs are this
    run's); a normal end. ``upstream_failed``: a pipeline step never started because a step it
    depends on failed; a failure."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    PRUNED = "pruned"
    FAILED = "failed"
    CANCELLED = "cancelled"
    CACHED = "cached"
    UPSTREAM_FAILED = "upstream_failed"

    @property
    def finished(self) -> bool:
        return self.value in FINAL_STATES

    @property
    def ok(self) -> bool:
        """Ended normally: completed, pruned by its search, or cached."""
        return self.value in OK_STATES


FINAL_STATES = ("completed", "pruned", "cached", "failed", "cancelled", "upstream_failed")
OK_STATES = ("completed", "pruned", "cached")  # ended normally: no error to raise
STATES = tuple(s.value for s in RunState)


@dataclass(frozen=True)
class Run:
    """One execution of one function version, as recorded."""

    uid: str
    function: str
    function_hash: str
    state: str
    params: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, Any] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, list] = field(default_factory=dict)
    artifacts: dict[str, Artifact] = field(default_factory=dict)
    logs: str = ""
    error: dict[str, str] | None = None
    attempts: int = 0
    parent: str | None = None
    iteration: int | None = None
    backend: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    created_at: datetime | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    cache_key: str | None = None  # the step cache key it ran under (``shoal.step_cache``)
    cached_from: str | None = None  # a ``cached`` run: the uid of the run whose outputs it reuses

    @property
    def duration(self) -> float | None:
        """Seconds from start to end (None until both are known)."""
        if self.started_at is None or self.ended_at is None:
            return None
        return (self.ended_at - self.started_at).total_seconds()

    @property
    def ok(self) -> bool:
        """Ended normally: ``completed``, ``pruned`` (a trial its search stopped early) or ``cached``."""
        return self.state in OK_STATES

    def output(self, key: str) -> Any:
        """A result by key, or the loaded artifact of that key."""
        if key in self.results:
            return self.results[key]
        if key in self.artifacts:
            return self.artifacts[key].load()
        raise KeyError(f"run {self.uid[:12]} has no result or artifact {key!r}")

    def raise_for_state(self) -> Run:
        """Raise RunFailedError unless the run ended normally: ``completed``, ``cached``, or ``pruned``
        (pruning is a normal outcome of a tuning trial, as in Optuna; check ``state`` to tell them apart)."""
        if self.state not in OK_STATES:
            error = self.error or {}
            detail = f": {error.get('type')}: {error.get('message')}" if error else ""
            raise RunFailedError(f"run {self.uid[:12]} of {self.function} {self.state}{detail}", run=self)
        return self

    @classmethod
    def from_record(cls, record: Any) -> Run:
        return cls(
            uid=record.uid,
            function=record.function,
            function_hash=record.function_hash,
            state=record.state,
            params=dict(record.params or {}),
            inputs=dict(record.inputs or {}),
            results=dict(record.results or {}),
            metrics=dict(record.metrics or {}),
            artifacts={a.key: Artifact.from_record(a) for a in (record.artifacts or ())},
            logs=record.logs or "",
            error=record.error,
            attempts=record.attempts or 0,
            parent=record.parent,
            iteration=record.iteration,
            backend=record.backend or "",
            labels=dict(record.labels or {}),
            created_at=record.created_at,
            started_at=record.started_at,
            ended_at=record.ended_at,
            cache_key=record.cache_key,
            cached_from=record.cached_from,
        )

    def to_dict(self) -> dict[str, Any]:
        def iso(value: datetime | None) -> str | None:
            return value.isoformat() if value else None

        return {
            "uid": self.uid,
            "function": self.function,
            "function_hash": self.function_hash,
            "state": self.state,
            "params": self.params,
            "inputs": self.inputs,
            "results": self.results,
            "metrics": self.metrics,
            "artifacts": {key: a.to_record() for key, a in self.artifacts.items()},
            "error": self.error,
            "attempts": self.attempts,
            "parent": self.parent,
            "iteration": self.iteration,
            "backend": self.backend,
            "labels": self.labels,
            "created_at": iso(self.created_at),
            "started_at": iso(self.started_at),
            "ended_at": iso(self.ended_at),
            "duration": self.duration,
            "cache_key": self.cache_key,
            "cached_from": self.cached_from,
        }

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in list(self.results.items())[:4])
        return f"<shoal.Run {self.uid[:12]} {self.function} {self.state}{' ' + shown if shown else ''}>"


_RUN_FIELDS = tuple(Run.__dataclass_fields__)


def run_of(values: dict[str, Any]) -> Run:
    """The Run with ``values``, one for each of its fields, set in one step: a frozen dataclass's
    ``__init__`` sets each of its 21 fields through ``object.__setattr__`` (measured: 2 us, a tenth
    of that this way), and the dispatcher builds one per finished run of a map."""
    assert len(values) == len(_RUN_FIELDS), "run_of takes every field of a Run"
    run = object.__new__(Run)
    run.__dict__.update(values)
    return run


class RunHandle:
    """A submitted run: poll ``state``, ``wait``, get the recorded ``result()``, or ``cancel()``."""

    def __init__(self, uid: str, function: str, canceller: Callable[[RunHandle], bool]):
        self.uid = uid
        self.function = function
        self._canceller = canceller
        self._state = RunState.PENDING.value
        self._run: Run | None = None
        self._done = Latch()  # an Event only once someone waits (``shoal.latch``)
        self._callbacks: list[Callable[[RunHandle], None]] = []
        self._lock = threading.Lock()
        self.cancel_requested = False
        _handles[uid] = self

    @property
    def state(self) -> str:
        return self._state

    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the run is recorded as finished; False if ``timeout`` passed first."""
        return self._done.wait(timeout)

    def result(self, timeout: float | None = None) -> Run:
        """The recorded Run once finished, whatever its state: a failed, cancelled or pruned run is
        returned, not raised (``Run.raise_for_state`` raises for failed and cancelled only)."""
        if not self._done.wait(timeout):
            raise RunTimeoutError(f"run {self.uid[:12]} of {self.function} still {self._state} after {timeout} s")
        assert self._run is not None
        return self._run

    def cancel(self) -> bool:
        """Cancel if pending, stop if running; True if the request was delivered."""
        if self._done.is_set():
            return False
        self.cancel_requested = True
        return self._canceller(self)

    def add_done_callback(self, callback: Callable[[RunHandle], None]) -> None:
        with self._lock:
            if not self._done.is_set():
                self._callbacks.append(callback)
                return
        callback(self)

    # For the code that drives the run only (as ``concurrent.futures.Future.set_result`` is for
    # executors): the dispatcher, the cache and pipeline steps.
    def set_running(self) -> None:
        """The run started where it runs."""
        if not self._done.is_set():
            self._state = "running"

    def set_run(self, run: Run) -> None:
        """The run ended (or was recorded ended): resolve the handle and call its callbacks."""
        with self._lock:
            self._run = run
            self._state = run.state
            self._done.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback(self)

    def __repr__(self) -> str:
        return f"<shoal.RunHandle {self.uid[:12]} {self.function} {self._state}>"


# The handles of this process by run uid, so a cancel that names a run reaches the run itself.
_handles: weakref.WeakValueDictionary[str, RunHandle] = weakref.WeakValueDictionary()


def live_handle(uid: str) -> RunHandle | None:
    """This process's handle of run ``uid`` while the run is unfinished, else None."""
    handle = _handles.get(uid)
    return handle if handle is not None and not handle.done() else None


def cancel_live(uids: list[str]) -> None:
    """Cancel this process's unfinished handles among ``uids`` (runs recorded cancelled from outside)."""
    for uid in uids:
        handle = live_handle(uid)
        if handle is not None and not handle.cancel_requested:
            handle.cancel()


def gather(runs: Iterable[Run | RunHandle], errors: str = "raise") -> list[Any]:
    """What each run's handler returned, in order, as Dask's ``client.gather(futures)`` and Ray's
    ``ray.get(refs)`` give their tasks' values (handles are waited for first).

    A returned mapping was recorded as the run's results and comes back as that mapping; any other
    returned value as it was recorded (the result ``return``); a handler that returned nothing gives
    its logged results. ``errors="raise"`` (Dask's default) raises ``RunFailedError`` for the first
    run that failed or was cancelled; ``errors="skip"`` leaves such runs out, as Dask does.
    """
    if errors not in ("raise", "skip"):
        raise ValueError(f"errors must be 'raise' or 'skip', got {errors!r}")
    values = []
    for item in runs:
        run = item.result() if isinstance(item, RunHandle) else item
        if not isinstance(run, Run):
            raise TypeError(f"gather takes shoal Runs or RunHandles, got {type(item).__name__}")
        if not run.ok:
            if errors == "skip":
                continue
            run.raise_for_state()
        values.append(run.results["return"] if "return" in run.results else dict(run.results))
    return values
