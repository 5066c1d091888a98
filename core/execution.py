"""What runs on a worker: rebuild the handler, call it with a Context, package what it produced.

``execute(task)`` is the one entry point every backend calls (in-process, in a Dask worker, in a Ray
task). It never touches the database: it returns a ``RunOutcome`` that the driver records. It never
raises for problems of the user's code: those become a failed outcome with the error and traceback.

How a running handler is stopped lives in ``shoal.supervision``; how an error is recorded in
``shoal.error_records`` (``error_record``, ``error_dict``, re-exported here with ``StopSignal``).
"""

from __future__ import annotations

import functools
import operator
import os
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, fields
from types import CoroutineType
from typing import TYPE_CHECKING, Any

from . import logcapture
from .artifacts import Artifact
from .code import Code, load_handler
from .context import Context
from .context import artifact_store as artifact_store  # re-exported: callers import it from here
from .data_item import DataItem, wants_data_item
from .error_records import error_dict, error_record
from .errors import RunCancelledError, RunTimeoutError, ShoalError
from .gc_freeze import older_objects_frozen
from .logcapture import DEFAULT_LIMIT, BoundedLog
from .params import params_for, signature_of
from .secrets import mask_data
from .supervision import StopSignal, call_stoppable

if TYPE_CHECKING:  # pragma: no cover
    from .isolation import ChildPool


@dataclass
class RunTask:
    """Everything a worker needs for one attempt of one run; small and picklable."""

    uid: str
    project: str
    function: str
    function_hash: str
    handler: str
    # None only in transit: Ray ships large code once through its object store, the worker puts it back
    code: Code | None
    params: dict[str, Any]
    artifact_url: str
    inputs: dict[str, dict] = field(default_factory=dict)
    timeout: float | None = None
    attempt: int = 1
    iteration: int | None = None
    labels: dict[str, str] = field(default_factory=dict)  # the run's labels, as the handler sees them
    env: dict[str, str] = field(default_factory=dict)
    # Resolved secret values by variable name (see ``shoal.secrets``): shipped with the task, never
    # recorded; masked in its repr and in the run's logs and error.
    secrets: dict[str, str] = field(default_factory=dict, repr=False)
    gpus: int = 0  # whole GPUs the engine reserves for this run (Ray num_gpus, Dask resources)
    log_limit: int = DEFAULT_LIMIT
    echo: bool = False
    # A picklable factory of a context manager entered around the handler on the worker, given the
    # Context: how extensions (tuning trials) attach to a run without core knowing them. It may have
    # a non-blocking ``prepare()``, started in a batch while the run before it runs.
    scope: Callable[[Context], Any] | None = None
    callable: Callable | None = field(default=None, repr=False, compare=False)  # in-process only

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # Its fields in order (as RunOutcome), without the in-process callable: workers rebuild the
        # handler from the shipped code. Every task crosses to a worker; a tuple pickles and loads
        # in about half the time of a dict of the fields. Empty secrets go as a plain {} (their
        # dict subclass cost the pickler ~15 us per task, measured).
        values = _task_fields(self)
        if not self.secrets:
            values = (*values[:_SECRETS], {}, *values[_SECRETS + 1 :])
        return (RunTask, values)

    def without_code(self) -> RunTask:
        """A shallow copy without its code, for engines that ship the code once per function (a
        plain copy of the fields: ``copy.copy`` goes through pickling's protocol, slow per run)."""
        clone = object.__new__(RunTask)
        clone.__dict__.update(self.__dict__)
        clone.code = None
        return clone

    @property
    def artifact_prefix(self) -> str:
        return f"{self.project}/runs/{self.uid}"

    @property
    def uids(self) -> tuple[str, ...]:
        return (self.uid,)


_task_fields = operator.attrgetter(*(f.name for f in fields(RunTask) if f.name != "callable"))
_SECRETS = [f.name for f in fields(RunTask)].index("secrets")
assert fields(RunTask)[-1].name == "callable", "RunTask.__reduce__ leaves out its last field, the callable"


def _of_first_run(name: str) -> Any:
    """A read-only attribute of a ``RunBatch``: the same field of its first run."""
    return property(lambda batch: getattr(batch.tasks[0], name))


@dataclass
class RunBatch:
    """Several short runs of one function travelling as one engine task (see ``execute_batch``).

    Engines charge a fixed cost per task (about a millisecond on Ray, more on Dask); runs shorter
    than that are cheaper shipped together, as joblib's auto batching and Ray's ``Pool.map``
    chunks do. Each run keeps its own uid, start report, timeout and outcome.
    """

    tasks: list[RunTask]

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ValueError("a RunBatch needs at least one task")
        self.uid = f"batch-{self.tasks[0].uid}"

    @property
    def uids(self) -> tuple[str, ...]:
        return tuple(task.uid for task in self.tasks)

    # What engines read off a task to place it is the same for every run of the batch: the first's.
    function = _of_first_run("function")
    function_hash = _of_first_run("function_hash")
    gpus = _of_first_run("gpus")
    attempt = _of_first_run("attempt")


@dataclass
class RunOutcome:
    """What one attempt produced. ``state`` is completed, pruned (the handler raised
    ``optuna.TrialPruned``: a normal end, never retried), failed or cancelled."""

    uid: str
    state: str
    attempt: int
    started_at: float | None  # None: it never started (cancelled while pending)
    ended_at: float
    results: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, list] = field(default_factory=dict)
    artifacts: list[dict] = field(default_factory=list)
    logs: str = ""
    error: dict[str, str] | None = None
    worker: str = ""
    params: dict[str, Any] | None = None  # the parameters, when chosen on the worker (tuning trials)
    labels: dict[str, str] | None = None  # labels the handler set (ctx.set_label), added to the run's

    @property
    def pruned(self) -> bool:
        return self.state == "pruned"

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # Its fields in order rather than a dict of them: an outcome crosses a process for every
        # run; this pickles in three quarters of the time, half the bytes, and loads in half.
        return (type(self), _outcome_fields(self))


_outcome_fields = operator.attrgetter(*(f.name for f in fields(RunOutcome)))


@contextmanager
def swapped_environment(env: dict[str, str]) -> Iterator[None]:
    """Set ``env`` in this process for the block and restore what was there before (unset
    variables are unset again): the one place runs change ``os.environ``. Only correct where no other run executes in this
    process meanwhile: backends whose processes run several runs at once pass ``isolate=True`` to
    ``execute``, which then runs such a run in a process of its own (``shoal.isolation``)."""
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


def execute(
    task: RunTask,
    on_start: Callable[[str, float], None] | None = None,
    stop: StopSignal | None = None,
    on_enter: Callable[[], None] | None = None,
    *,
    isolate: bool = False,
    children: ChildPool | None = None,
) -> RunOutcome:
    """Run one attempt of ``task`` and return its outcome (never raises for user-code errors).

    Setting ``stop`` (how a backend cancels a running task) ends the attempt as cancelled.
    ``on_enter`` is called once the run's scope is entered, as the handler is about to run.
    ``isolate``: other runs may execute in this process at the same time, so a task whose env or
    secrets would change the process's environment runs in a child process of its own, from
    ``children`` (a ``shoal.isolation.ChildPool``; default: this process's).

    This runs once per run on every engine: what does not depend on the run (the handler, its
    signature, the worker's name) is looked up once per process, the artifact store opened only
    when the handler stores something, and a run without scope, env or timeout enters nothing.
    """
    if isolate:
        from .isolation import changes_environment, default_pool

        if changes_environment(task):
            return (children or default_pool()).execute(task, on_start, stop, on_enter)
    started = time.time()
    if on_start is not None:
        on_start(task.uid, started)
    inputs = {key: Artifact.from_record(record) for key, record in task.inputs.items()} if task.inputs else {}
    ctx = Context(
        uid=task.uid,
        function=task.function,
        params=task.params,
        inputs=inputs,
        artifact_url=task.artifact_url,
        artifact_prefix=task.artifact_prefix,
        attempt=task.attempt,
        project=task.project,
        iteration=task.iteration,
        labels=task.labels,
        secrets=task.secrets,
    )
    state, error = "completed", None
    secret_values = tuple(task.secrets.values()) if task.secrets else ()
    log = BoundedLog(task.log_limit, secret_values)
    logcapture.push((log, task.echo))
    try:
        if task.scope is None and not task.env and not task.secrets:  # most runs: nothing to enter
            _run(task, ctx, inputs, stop, on_enter)
        else:
            env = {**task.env, **task.secrets} if task.env or task.secrets else None
            with task.scope(ctx) if task.scope else nullcontext(), swapped_environment(env) if env else nullcontext():
                _run(task, ctx, inputs, stop, on_enter)
    except RunTimeoutError as exc:
        state, error = "failed", error_record(exc, f"run exceeded its timeout of {task.timeout:g} s")
        error["type"] = "TimeoutError"
    except (RunCancelledError, KeyboardInterrupt) as exc:
        state, error = "cancelled", error_record(exc, "run was cancelled while running")
        error["type"] = "CancelledError"  # as for a run cancelled before it started
    except BaseException as exc:  # noqa: BLE001 - everything the user's code raises is recorded
        if _is_pruned(exc):  # the state says it: no marker in the results
            state = "pruned"
        else:
            message = str(exc) if isinstance(exc, ShoalError) else None
            state, error = "failed", error_record(exc, message)
    finally:
        logcapture.pop()
    results = dict(ctx.results)  # a copy: a handler that could not be stopped may still be logging
    if secret_values:  # an error message, a traceback or a result may quote a secret
        error, results = mask_data(error, secret_values), mask_data(results, secret_values)
    # Copies: a handler that could not be stopped may still be logging in its abandoned thread.
    metrics = {key: list(series) for key, series in list(ctx.metrics.items())} if ctx.metrics else {}
    artifacts = [a.to_record() for a in list(ctx.artifacts.values())] if ctx.artifacts else []
    return RunOutcome(
        task.uid,
        state,
        task.attempt,
        started,
        time.time(),
        results,
        metrics,
        artifacts,
        log.getvalue(),
        error,
        _worker_name(),
        dict(ctx.params) if ctx.params_chosen else None,
        dict(ctx.labels_set) or None,
    )


def _run(
    task: RunTask, ctx: Context, inputs: dict[str, Artifact], stop: StopSignal | None, on_enter: Callable | None
) -> None:
    """The handler called (where it can be stopped) and what it returned logged, inside the run's scope."""
    if on_enter is not None:
        on_enter()
    func = task.callable if task.callable is not None else _handler_of(task)
    if task.timeout:  # a timer, or a supervising thread
        body = functools.partial(_call_and_log, func, ctx, inputs)
        call_stoppable(body, task.timeout, stop, f"shoal-run-{task.uid[:8]}")
    elif stop is not None:  # most runs: in this thread, as call_stoppable would, one call shorter
        stop.call(_call_and_log, func, ctx, inputs)
    else:
        _call_and_log(func, ctx, inputs)


def _call_and_log(func: Callable, ctx: Context, inputs: dict[str, Artifact]) -> None:
    _auto_log(ctx, _call(func, ctx, ctx.params, inputs))


_worker_name_cache: list[str] = []  # "host:pid" of this process, asked once (getpid is a system call)
os.register_at_fork(after_in_child=_worker_name_cache.clear)


def _worker_name() -> str:
    if not _worker_name_cache:
        _worker_name_cache.append(f"{socket.gethostname()}:{os.getpid()}")
    return _worker_name_cache[0]


_handlers: dict[tuple[str, str], Callable] = {}  # (function hash, handler) -> handler, in this process
MAX_HANDLERS = 256


def _handler_of(task: RunTask) -> Callable:
    """The handler rebuilt from the task's code, once per function version and process: the hash
    names the code, so the next run skips fingerprinting it (a SHA-256 of the whole file)."""
    key = (task.function_hash, task.handler)
    func = _handlers.get(key)
    if func is None:
        assert task.code is not None, "a worker puts shipped code back before running"
        func = load_handler(task.code, task.handler)
        if len(_handlers) >= MAX_HANDLERS:
            _handlers.clear()
        _handlers[key] = func
    return func


# Running attempts by run uid: a dict's single operations are atomic, so no lock (it cost two per run).
_attempts: dict[str, StopSignal] = {}


def execute_registered(
    task: RunTask,
    on_start: Callable[[str, float], None] | None = None,
    on_enter: Callable[[], None] | None = None,
    *,
    isolate: bool = False,
) -> RunOutcome:
    """``execute`` for engines whose workers live in other processes: the attempt is registered in
    this worker process so that ``stop_attempt(uid)``, sent through the engine, can cancel it."""
    stop = _attempts[task.uid] = StopSignal()
    try:
        return execute(task, on_start, stop, on_enter, isolate=isolate)
    finally:
        _attempts.pop(task.uid, None)


def never_started(task: RunTask) -> RunOutcome:
    """The outcome of an attempt that was cancelled before the user's code began."""
    error = error_dict("CancelledError", "run was cancelled before it started")
    return RunOutcome(
        uid=task.uid, state="cancelled", attempt=task.attempt - 1, started_at=None, ended_at=time.time(), error=error
    )


def execute_batch(
    batch: RunBatch,
    on_start: Callable[[str, float], None] | None = None,
    *,
    refused: Callable[[str], bool] | None = None,
    cancel_ends_batch: bool = False,
    isolate: bool = False,
) -> list[RunOutcome]:
    """Run the batch's attempts one after the other in this worker; one outcome per task, in order.

    ``refused(uid)`` says a run was cancelled before it began here (it is then skipped).
    ``cancel_ends_batch``: the engine cancels by interrupting the whole task (Ray's
    KeyboardInterrupt), so a cancelled run means the batch was cancelled and the runs after it
    come back as never started.

    While one run's handler runs, the next run's scope may prepare (a scope with a ``prepare()``
    method, such as a tuning trial sampling its parameters), so that run starts without that delay.
    """
    with older_objects_frozen():  # the batch's many short-lived objects: see ``shoal.gc_freeze``
        return _execute_each(batch.tasks, on_start, refused, cancel_ends_batch, isolate)


def _execute_each(
    tasks: list[RunTask],
    on_start: Callable[[str, float], None] | None,
    refused: Callable[[str], bool] | None,
    cancel_ends_batch: bool,
    isolate: bool,
) -> list[RunOutcome]:
    outcomes: list[RunOutcome] = []
    interrupted = False
    for index, task in enumerate(tasks):
        if interrupted or (refused is not None and refused(task.uid)):
            outcomes.append(never_started(task))
            continue
        following = tasks[index + 1].scope if index + 1 < len(tasks) else None
        prepare = getattr(following, "prepare", None)
        try:
            outcome = execute_registered(task, on_start, prepare, isolate=isolate)
        except KeyboardInterrupt:  # landed between two runs, outside any handler
            outcome, interrupted = never_started(task), True
        outcomes.append(outcome)
        interrupted = interrupted or (cancel_ends_batch and outcome.state == "cancelled")
    return outcomes


def stop_attempt(uid: str) -> bool:
    """Cancel the attempt of run ``uid`` running in this process; False if none is."""
    stop = _attempts.get(uid)
    if stop is None:
        return False
    stop.set()
    return True


def _call(func: Callable, ctx: Context, params: dict[str, Any], inputs: dict[str, Artifact]) -> Any:
    sig = signature_of(func)
    if sig.trial_param is not None:  # an Optuna objective: its values are its trial's, not arguments
        trial = _trial_for(func, ctx, {k: v for k, v in params.items() if k not in sig.names})
        params = {k: v for k, v in params.items() if k in sig.names}
    kwargs = params_for(sig, params)
    for key, artifact in inputs.items():
        if key in sig.names or sig.accepts_any:
            hint = sig.hints.get(key)
            if hint is Artifact:
                kwargs[key] = artifact
            else:
                kwargs[key] = DataItem(artifact) if wants_data_item(hint) else artifact.load()
    if sig.trial_param is not None:
        value = func(trial, **kwargs)
    else:
        value = func(ctx, **kwargs) if sig.context_param is not None else func(**kwargs)
    if isinstance(value, CoroutineType):  # an ``async def`` handler: run it to the end on this thread
        import asyncio  # here: it costs ~16 ms of ``import shoal``, and most handlers are plain

        value = asyncio.run(value)
    return _objective_value(value) if sig.trial_param is not None else value


def _trial_for(func: Callable, ctx: Context, values: dict[str, Any]) -> Any:
    """The trial an Optuna objective gets: the tuning trial, else an ``optuna.trial.FixedTrial`` of
    the run's parameters (how Optuna users re-run an objective with chosen values)."""
    if ctx.trial is not None:
        return ctx.trial
    if not values:
        from .errors import ParamError

        name = getattr(func, "__name__", "the handler")
        raise ParamError(
            f"{name} is an Optuna objective (its first parameter takes a trial) and this run has no trial: "
            f"search with shoal.tune({name}, n_trials=...) (or fn.tune(...)), or re-run it with fixed values "
            f"through params=, e.g. fn.run(params={{'x': 3.0}}) (its trial is then an optuna.trial.FixedTrial)"
        )
    import optuna

    return optuna.trial.FixedTrial(values)


def _objective_value(value: Any) -> Any:
    """What an Optuna objective returned, as results: one value as ``value``, a tuple or list
    (several objectives) as ``values``; a mapping is results as for any handler."""
    if value is None or isinstance(value, Mapping):
        return value
    if isinstance(value, (list, tuple)):
        return {"values": list(value)}
    return {"value": value}


_PLAIN = frozenset({int, float, str, bool})  # what a handler most often returns: never a mapping


def _auto_log(ctx: Context, value: Any) -> None:
    """A returned mapping becomes results; any other value the result ``return``."""
    if value is None:
        return
    if type(value) is dict or (type(value) not in _PLAIN and isinstance(value, Mapping)):
        ctx.log_results(value)
    else:
        ctx.log_result("return", value)
