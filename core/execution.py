"""What runs on a worker: rebuild the handler, call it with a Context, package what it produced.

``execute(task)`` is the one entry point every backend calls (in-process, in a Dask worker, in a Ray
task). It never touches the database: it returns a ``RunOutcome`` that the driver records. It never
raises for problems of the user's code: those become a failed outcome with the error and traceback.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import threading
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from .artifacts import Artifact, ArtifactStore
from .code import Code, load_handler
from .context import Context
from .errors import RunCancelledError, RunTimeoutError, ShoalError
from .logcapture import DEFAULT_LIMIT, capture_output
from .params import signature_of


@dataclass
class RunTask:
    """Everything a worker needs for one attempt of one run; small and picklable."""

    uid: str
    project: str
    function: str
    function_hash: str
    handler: str
    code: Code
    params: dict[str, Any]
    artifact_url: str
    inputs: dict[str, dict] = field(default_factory=dict)
    timeout: float | None = None
    attempt: int = 1
    iteration: int | None = None
    env: dict[str, str] = field(default_factory=dict)
    log_limit: int = DEFAULT_LIMIT
    echo: bool = False
    # A picklable factory of a context manager entered around the handler on the worker, given the
    # Context: how extensions (tuning trials) attach to a run without core knowing them.
    scope: Callable[[Context], Any] | None = None
    callable: Callable | None = field(default=None, repr=False, compare=False)  # in-process only

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["callable"] = None  # workers rebuild the handler from the shipped code
        return state

    @property
    def artifact_prefix(self) -> str:
        return f"{self.project}/runs/{self.uid}"


@dataclass
class RunOutcome:
    """What one attempt produced. ``state`` is completed, failed or cancelled."""

    uid: str
    state: str
    attempt: int
    started_at: float
    ended_at: float
    results: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, list] = field(default_factory=dict)
    artifacts: list[dict] = field(default_factory=list)
    logs: str = ""
    error: dict[str, str] | None = None
    worker: str = ""
    pruned: bool = False


def error_record(exc: BaseException, message: str | None = None) -> dict[str, str]:
    kind = type(exc)
    name = kind.__qualname__ if kind.__module__ in ("builtins", "__main__") else f"{kind.__module__}.{kind.__qualname__}"
    return {
        "type": name,
        "message": message if message is not None else str(exc),
        "traceback": "".join(traceback.format_exception(kind, exc, exc.__traceback__)),
    }


def async_raise(thread_id: int, exc_type: type[BaseException]) -> bool:
    """Raise ``exc_type`` in another thread at its next bytecode (how local runs are stopped)."""
    done = ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(exc_type))
    if done > 1:  # should not happen; undo
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), None)
        return False
    return done == 1


@contextmanager
def deadline(seconds: float | None) -> Iterator[None]:
    """Raise RunTimeoutError inside the block after ``seconds`` (signal in the main thread, else an
    asynchronous exception)."""
    if not seconds:
        yield
        return
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):

        def on_alarm(signum, frame):
            raise RunTimeoutError()

        previous = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        return
    thread_id = threading.get_ident()
    lock = threading.Lock()
    active = [True]

    def fire() -> None:
        with lock:
            if active[0]:
                async_raise(thread_id, RunTimeoutError)

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        with lock:
            active[0] = False
        timer.cancel()


@contextmanager
def _environment(env: dict[str, str]) -> Iterator[None]:
    if not env:
        yield
        return
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _is_pruned(exc: BaseException) -> bool:
    return type(exc).__name__ == "TrialPruned" and type(exc).__module__.startswith("optuna")


def execute(task: RunTask, on_start: Callable[[str, float], None] | None = None) -> RunOutcome:
    """Run one attempt of ``task`` and return its outcome (never raises for user-code errors)."""
    started = time.time()
    if on_start is not None:
        on_start(task.uid, started)
    worker = f"{socket.gethostname()}:{os.getpid()}"
    store = ArtifactStore(task.artifact_url)
    inputs = {key: Artifact.from_record(record) for key, record in task.inputs.items()}
    ctx = Context(
        uid=task.uid,
        function=task.function,
        params=task.params,
        inputs=inputs,
        artifact_store=store,
        artifact_prefix=task.artifact_prefix,
        attempt=task.attempt,
    )
    state, error, pruned = "completed", None, False
    with capture_output(task.log_limit, task.echo) as log:
        try:
            with (task.scope(ctx) if task.scope else _null()), _environment(task.env), deadline(task.timeout):
                func = task.callable or load_handler(task.code, task.handler)
                value = _call(func, ctx, task.params, inputs)
                _auto_log(ctx, value)
        except RunTimeoutError as exc:
            state, error = "failed", error_record(exc, f"run exceeded its timeout of {task.timeout:g} s")
            error["type"] = "TimeoutError"
        except (RunCancelledError, KeyboardInterrupt) as exc:
            state, error = "cancelled", error_record(exc, "run was cancelled while running")
        except BaseException as exc:  # noqa: BLE001 - everything the user's code raises is recorded
            if _is_pruned(exc):
                state, pruned = "completed", True
                ctx.results.setdefault("pruned", True)
            else:
                message = str(exc) if isinstance(exc, ShoalError) else None
                state, error = "failed", error_record(exc, message)
    return RunOutcome(
        uid=task.uid,
        state=state,
        attempt=task.attempt,
        started_at=started,
        ended_at=time.time(),
        results=ctx.results,
        metrics=ctx.metrics,
        artifacts=[a.to_record() for a in ctx.artifacts.values()],
        logs=log.getvalue(),
        error=error,
        worker=worker,
        pruned=pruned,
    )


@contextmanager
def _null() -> Iterator[None]:
    yield


def _call(func: Callable, ctx: Context, params: dict[str, Any], inputs: dict[str, Artifact]) -> Any:
    sig = signature_of(func)
    kwargs = dict(params)
    for key, artifact in inputs.items():
        if key in sig.names or sig.accepts_any:
            hint = sig.hints.get(key)
            kwargs[key] = artifact if hint is Artifact else artifact.load()
    if sig.context_param is not None:
        return func(ctx, **kwargs)
    return func(**kwargs)


def _auto_log(ctx: Context, value: Any) -> None:
    """A returned mapping becomes results; any other value the result ``return``."""
    if value is None:
        return
    if isinstance(value, dict):
        ctx.log_results(value)
    else:
        ctx.log_result("return", value)
