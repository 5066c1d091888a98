"""The search loop: ask a trial as soon as a slot frees, run it as a shoal run, tell it as it ends.

One thread (the caller's) owns the Optuna study: it asks, launches runs on the backend (which
return at once), and tells each trial the moment its run's handle reports done through a queue, so
a slow trial never holds back the others. Every trial is a child run of one parent tuning run.

Short trials travel in batches, as ``fn.map``'s runs do (``shoal.batch_size``): once the first trial
of every slot has shown how long a trial takes, trials shorter than ~50 ms go several to an engine
task, run one after the other on one worker. Each is still sampled where it starts and told where it
ends (``TrialScope``), so a batch's trials see each other's results and the others' as they come.

Resume: the study lives in shared storage, so re-running the same search continues it. Trials left
RUNNING by a driver that died are failed first (at once when that driver ran on this machine and
its process is gone; through Optuna's heartbeat where the storage has one), and retried up to the
function's ``retries`` with Optuna's ``RetryHeartbeatStaleTrialCallback``. Its trials that never
started (queued, or waiting in a batch) go back to the study's queue instead, and its run records
are mended: runs whose trials a worker told get the trial's values, the others fail.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import logging
import os
import queue
import socket
import time
import warnings
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

from shoal import batch_size as batching
from shoal.store.drivers import is_swept
from shoal.errors import ObjectiveMissingError, ParamError, SearchFailedError, ShoalWarning, TuningError

from . import storage as storages
from . import strategies, wording
from .objective import OPTUNA_RESULTS, RETURN_RESULTS, Objective, StopWhen
from .result import TuneResult
from .space import Space
from .trial_scope import TrialScope

if TYPE_CHECKING:  # pragma: no cover
    from shoal.function import Function
    from shoal.project import Project
    from shoal.runs import RunHandle

log = logging.getLogger("shoal.tuning")

ATTR_SPACE = "shoal:space"
ATTR_OBJECTIVE = "shoal:objective"
ATTR_PROJECT = "shoal:project"
ATTR_DRIVER = "shoal:driver:"  # + host:pid -> the driver's process identity, and whether it is active


@dataclass
class Progress:
    """Counts shown while a search runs (passed to the ``progress`` callback after every change)."""

    study: str
    n_trials: int | None
    done: int = 0  # finished trials of the study, earlier sessions included
    running: int = 0
    completed: int = 0  # finished in this session, by state
    pruned: int = 0
    failed: int = 0
    best_value: float | None = None
    best_trial: int | None = None
    started: float = field(default_factory=time.monotonic)


@dataclass
class _InFlight:
    trial: Any
    handle: "RunHandle"
    task: int  # the engine task (a batch, or the trial alone) it travels in


def _int_option(value: Any, name: str, minimum: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise TuningError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    return value


def tune(
    fn: "Function | Callable",
    space: Mapping[str, Any] | None = None,
    *,
    objective: str | Sequence[str] | None = None,
    direction: Any = None,
    directions: Sequence[Any] | None = None,
    n_trials: int | None = None,
    timeout: float | None = None,
    strategy: Any = "tpe",
    pruner: Any = None,
    parallelism: int | None = None,
    backend: Any = None,
    storage: Any = None,
    study: str | None = None,
    stop_when: str | None = None,
    max_failures: int | None = None,
    seed: int | None = None,
    project: "Project | None" = None,
    inputs: Mapping[str, Any] | None = None,
    progress: Callable[[Progress], None] | None = None,
) -> TuneResult:
    """Run an Optuna study whose trials are runs of ``fn``; returns a ``TuneResult``.

    The objective: ``objective="max.KEY"`` (or a list, for several) names results the handler
    logs; or ``direction=`` / ``directions=[...]``, as in ``optuna.create_study``, optimise the
    value it returns. An Optuna objective (``def objective(trial)``) gets the trial; its returned
    float (tuple, for ``directions``) is the objective, minimised unless ``direction="maximize"``.
    Other handlers default to ``objective="max.accuracy"``. ``space`` is optional for handlers
    that suggest their parameters through the trial (define-by-run). ``pruner`` defaults to
    Optuna's (``MedianPruner``); ``pruner="none"`` turns pruning off.

    ``n_trials`` counts the study's completed and pruned trials in total (a resumed study runs
    only what is missing; failed trials of earlier searches use up no budget). Everything is
    checked (space, objective, strategy, pruner, storage, the handler's parameters) before
    anything runs or is recorded. A search in which every trial failed raises SearchFailedError.
    """
    from shoal.function import Function

    if not isinstance(fn, Function):
        if not callable(fn):
            raise TuningError(f"tune needs a shoal.Function or a Python function, got {type(fn).__name__}")
        fn = Function.from_callable(fn)
    search = Search(
        fn,
        Space(space),
        _objective(fn, objective, direction, directions),
        n_trials=_int_option(n_trials, "n_trials", 1),
        timeout=_timeout(timeout),
        strategy=strategy,
        pruner=pruner,
        parallelism=_int_option(parallelism, "parallelism", 1),
        stop_when=StopWhen.parse(stop_when) if stop_when is not None else None,
        max_failures=_int_option(max_failures, "max_failures", 1),
        seed=_int_option(seed, "seed", 0),
        study=study,
    )
    return search.run(backend=backend, storage=storage, project=project, inputs=inputs, progress=progress)


def _objective(fn: "Function", objective: Any, direction: Any, directions: Any) -> Objective:
    """The search's objective from ``objective=`` or ``direction``/``directions`` (never both)."""
    if direction is not None and directions is not None:
        raise TuningError(
            f"give {wording.option('direction')} (one objective) or {wording.option('directions')} (several), not both"
        )
    if isinstance(directions, str):
        raise TuningError(
            f"directions must be a list, e.g. directions=['minimize', 'maximize']; for one objective give direction={directions!r}"
        )
    asked = [direction] if direction is not None else directions
    if objective is not None:
        if asked is not None:
            raise TuningError(
                f"objective={objective!r} already names the results and their direction; drop "
                f"{wording.option('direction' if direction is not None else 'directions')} (or drop "
                f"{wording.option('objective')} to optimise the value the handler returns)"
            )
        return Objective.parse(objective)
    trial_form = _takes_trial(fn)
    if asked is None:
        if not trial_form:
            return Objective.parse("max.accuracy")  # handlers that log named results
        asked = ["minimize"]  # Optuna's default direction
    return Objective.returned_value(list(asked), OPTUNA_RESULTS if trial_form else RETURN_RESULTS)


def _takes_trial(fn: "Function") -> bool:
    """Whether ``fn`` is an Optuna objective (its first parameter takes a trial)."""
    from shoal.errors import CodeError
    from shoal.params import signature_of

    try:
        handler = fn.callable
    except CodeError as exc:
        if isinstance(exc.__cause__, ImportError):  # a package only the workers have
            return False
        raise
    return signature_of(handler).trial_param is not None


def _timeout(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise TuningError(f"timeout must be a number of seconds > 0, got {value!r}")
    return float(value)


class Search:
    """One tune() call: checked settings, then the ask/launch/tell loop."""

    def __init__(self, fn: "Function", space: Space, objective: Objective, *, n_trials, timeout, strategy,
                 pruner, parallelism, stop_when, max_failures, seed, study):
        strategies.check_strategy(strategy)
        strategies.check_pruner(pruner)
        if study is not None and (not isinstance(study, str) or not study.strip()):
            raise TuningError(f"study must be a non-empty name, got {study!r}")
        self.fn = fn
        self.space = space
        self.objective = objective
        self.plan = strategies.sampler(strategy, space, seed=seed, multi=objective.multi)
        self.pruner = strategies.pruner(pruner, multi=objective.multi)
        if objective.multi and pruner is not None and not isinstance(self.pruner, _nop()):
            raise TuningError(f"pruning works with one objective only; drop {wording.option('pruner')} for a multi-objective search")
        if n_trials is None:
            n_trials = self.plan.size
        if n_trials is None and timeout is None:
            raise TuningError(
                f"give {wording.option('n_trials')} (or {wording.option('timeout')}) to bound the search, "
                f"e.g. {wording.option('n_trials', 50)}"
            )
        self.n_trials = n_trials
        self.timeout = timeout
        self.parallelism = parallelism
        self.stop_when = stop_when
        self.max_failures = max_failures
        self.study_name = (study or fn.name).strip()
        self.distributions = space.distributions()
        self.strategy = strategy
        self.seed = seed
        # Named samplers other than grid keep no state the driver's copy must see in after_trial
        # (GridSampler stops the study there), so their trials can be told where they run.
        self.tell_where_run = isinstance(strategy, str) and strategy.lower() != "grid"

    def trial_sampler(self, number: int) -> Any:
        """What a worker samples trial ``number``'s define-by-run parameters with: a description
        of a named strategy's sampler (seeded from the search's seed and the number), else the
        user's sampler object."""
        if not isinstance(self.strategy, str):
            return self.plan.sampler
        seed = None if self.seed is None else (self.seed * 1_000_003 + number) % 2**32
        return strategies.NamedSampler(self.strategy, self.space, seed, self.objective.multi)

    # -- setup ----------------------------------------------------------------------------------
    def run(self, *, backend, storage, project, inputs, progress) -> TuneResult:
        from shoal.runner import _driver

        driver = _driver(self.fn, backend, project)
        self.driver = driver
        self.project = driver.project
        try:
            driver.check(self.space.sample(), inputs)  # the handler takes these parameters
        except ParamError as exc:
            raise ParamError(f"the search space does not fit the handler: {exc}") from None
        self.ref = storages.resolve(storage, self.project)
        storages.refuse_remote(self.ref, driver.backend)
        self.storage = self.ref.open(heartbeat=True)
        self.heartbeat = _heartbeat_enabled(self.storage)
        self.study = self._open_study()
        driver.save_function()
        staged = driver.stage_inputs(inputs)
        self._fail_stale()
        self.driver_key = f"{ATTR_DRIVER}{_HOST}:{os.getpid()}"
        self.study.set_user_attr(self.driver_key, {**_owner(), "active": True})
        for params in self.plan.queue:  # list strategy: fixed assignments, once each
            self.study.enqueue_trial(params, skip_if_exists=True)
        slots = max(1, driver.backend.slots)
        if self.parallelism is not None and self.parallelism > slots:
            fitted = driver.backend is not backend  # resolved by name: adapted to the replicas
            message = _parallelism_capped(self.parallelism, slots, self.fn, driver.backend, fitted)
            warnings.warn(message, ShoalWarning, stacklevel=4)
        parallelism = self.parallelism or slots
        return _Loop(self, staged, parallelism, progress).run()

    def _open_study(self) -> Any:
        import optuna

        directions = list(self.objective.directions)
        study = optuna.create_study(
            storage=self.storage,
            study_name=self.study_name,
            sampler=self.plan.sampler,
            pruner=self.pruner,
            directions=directions,
            load_if_exists=True,
        )
        signature = self.space.signature()
        attrs = study.user_attrs
        found = [d.name.lower() for d in study.directions]
        if found != directions:
            raise self._mismatch("objective directions", found, directions)
        if ATTR_OBJECTIVE in attrs and attrs[ATTR_OBJECTIVE] != self.objective.selectors():
            raise self._mismatch("objective", attrs[ATTR_OBJECTIVE], self.objective.selectors())
        if ATTR_SPACE in attrs and attrs[ATTR_SPACE] != signature:
            raise self._mismatch("search space", _shown(attrs[ATTR_SPACE]), _shown(signature))
        if ATTR_PROJECT in attrs and attrs[ATTR_PROJECT] != self.project.name:
            raise TuningError(
                f"study {self.study_name!r} in {self.ref.describe()} belongs to project {attrs[ATTR_PROJECT]!r}; "
                f"give {wording.option('study')} another name"
            )
        for key, value in ((ATTR_SPACE, signature), (ATTR_OBJECTIVE, self.objective.selectors()), (ATTR_PROJECT, self.project.name)):
            if key not in attrs:
                study.set_user_attr(key, value)
        return study

    def _mismatch(self, what: str, stored: Any, given: Any) -> TuningError:
        return TuningError(
            f"study {self.study_name!r} in {self.ref.describe()} was run with a different {what} "
            f"(stored: {stored}; given: {given}); give {wording.option('study')} a new name, or delete the "
            f"old study and its trials ({wording.delete_study(self.study_name)})"
        )

    def _fail_stale(self) -> None:
        """Fail trials whose driver died (same machine, process gone), and heartbeat-stale ones;
        give back those that never started, and finish the dead drivers' open run records."""
        import optuna
        from optuna.trial import TrialState

        retries = self.fn.spec.retries
        callback = None
        if retries:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                callback = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=retries)
        dead_parents = set()
        # A trial asked by a driver killed before it could label the trial has no owner: it is stale
        # when no driver registered on the study may still be alive.
        drivers = [v for k, v in self.study.user_attrs.items() if k.startswith(ATTR_DRIVER) and isinstance(v, dict)]
        unlabelled_stale = not any(d.get("active") and not _dead(d) for d in drivers)
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            info = trial.user_attrs.get("shoal") or {}
            owner = info.get("driver") or {}
            if not (_dead(owner) if owner else unlabelled_stale):
                if not owner:
                    log.warning("study %s: trial %d is running without a shoal driver; left as it is", self.study_name, trial.number)
                continue
            if self._recover(trial, info.get("run")) or self._requeue_unstarted(trial, info.get("run")):
                dead_parents.add(info.get("parent"))
                continue
            who = f"(pid {owner.get('pid')} on {owner.get('host')}) " if owner else ""
            note = f"failed at resume: its driver {who}died while it ran"
            self.storage.set_trial_user_attr(trial._trial_id, "shoal_error", note)
            try:
                if not self.storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                    continue
            except optuna.exceptions.UpdateFinishedTrialError:
                continue
            log.warning("study %s: trial %d %s", self.study_name, trial.number, note)
            if callback is not None:
                callback(self.study, copy.deepcopy(self.storage.get_trial(trial._trial_id)))
            self._fail_record(info.get("run"), "DriverLost", note)
            if info.get("parent"):
                dead_parents.add(info["parent"])
        for key, owner in self.study.user_attrs.items():
            if key.startswith(ATTR_DRIVER) and isinstance(owner, dict) and owner.get("active") and _dead(owner):
                if owner.get("parent"):
                    self._mend_children(owner["parent"])
                    dead_parents.add(owner["parent"])
                self.study.set_user_attr(key, {**owner, "active": False})
        for parent in dead_parents - {None}:
            self._fail_record(parent, "DriverLost", "the tuning driver died; the search was resumed by another run")
        if self.heartbeat:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(self.study)

    def _recover(self, trial: Any, uid: str | None) -> bool:
        """Tell a dead driver's trial whose run did finish and was recorded (it died before telling)."""
        import optuna
        from optuna.trial import TrialState

        if not uid:
            return False
        try:
            run = self.project.runs.get(uid)
        except Exception:  # noqa: BLE001 - no record: the trial is failed instead
            return False
        if run.state not in ("completed", "pruned"):
            return False
        try:
            if run.state == "pruned":
                self.study.tell(trial.number, state=TrialState.PRUNED)
            else:
                values = self.objective.values(run.results)
                self.study.tell(trial.number, values if self.objective.multi else values[0])
        except (optuna.exceptions.UpdateFinishedTrialError, TuningError, ObjectiveMissingError):
            return False
        log.warning("study %s: trial %d of a dead driver had finished; told it at resume", self.study_name, trial.number)
        return True

    def _requeue_unstarted(self, trial: Any, uid: str | None) -> bool:
        """Give a dead driver's trial whose run never started back to the study's queue (WAITING):
        nothing ran, so nothing failed. Its run record ends cancelled, never started."""
        from optuna.trial import TrialState

        if not uid:
            return False
        try:
            record = self.project.store.get_run(uid)
            # Pending, or ended as never started by the store's sweep of lost drivers (is_swept).
            if not (record.state == "pending" or (is_swept(record) and record.started_at is None)):
                return False
            if not self.storage.set_trial_state_values(trial._trial_id, state=TrialState.WAITING):
                return False
        except Exception:  # noqa: BLE001 - no record, or the trial moved on: failed instead
            return False
        message = "never started: its tuning driver died; the trial went back to the study's queue"
        self._finish_record(uid, {"state": "cancelled", "error": {"type": "CancelledError", "message": message, "traceback": ""}})
        log.warning("study %s: trial %d of a dead driver never started; queued again", self.study_name, trial.number)
        return True

    def _mend_children(self, parent: str) -> None:
        """Finish the records a dead driver left open: a trial a worker told (complete or pruned)
        gives its run the trial's values and parameters; any other run failed with its driver."""
        from optuna.trial import TrialState

        trials = {t.number: t for t in self.study.get_trials(deepcopy=False)}
        for run in self.project.store.list_runs(parent=parent, state=("pending", "running", "failed")):
            if run.state == "failed" and not is_swept(run):  # swept: left open, ended by the store
                continue
            trial = trials.get(run.iteration)
            told = (
                trial is not None
                and (trial.user_attrs.get("shoal") or {}).get("run") == run.uid
                and trial.state in (TrialState.COMPLETE, TrialState.PRUNED)
            )
            if not told:
                self._finish_record(run.uid, _failed("DriverLost", "its tuning driver died before the run's outcome was recorded"))
                continue
            pruned = trial.state == TrialState.PRUNED
            results: dict[str, Any] = {} if pruned else self.objective.results(trial.values)
            self._finish_record(run.uid, {
                "state": "pruned" if pruned else "completed",
                "params": _json({**run.params, **trial.params}),
                "results": _json(results),
                "started_at": run.started_at or _utc(trial.datetime_start),
                "ended_at": _utc(trial.datetime_complete) or _now(),
                "logs": run.logs + "[shoal] the tuning driver died before recording this run; its trial's "
                "values and parameters were restored from the study (logs, metrics and other results are lost)\n",
            })

    def _finish_record(self, uid: str, fields: dict[str, Any]) -> None:
        try:
            self.project.store.finish_run(uid, {"ended_at": _now(), **fields})
        except Exception as exc:  # noqa: BLE001 - a record we cannot mend must not stop the search
            log.warning("could not mend run %s: %s", uid[:12], exc)

    def _fail_record(self, uid: str | None, kind: str, message: str) -> None:
        """Fail run ``uid`` if it is still open."""
        if not uid:
            return
        try:
            record = self.project.store.get_run(uid)
            if record.state not in ("pending", "running") and not is_swept(record):
                return
        except Exception as exc:  # noqa: BLE001 - a record we cannot read must not stop the search
            log.warning("could not mark run %s failed: %s", uid[:12], exc)
            return
        self._finish_record(uid, _failed(kind, message))


def _parallelism_capped(asked: int, slots: int, fn: "Function", backend: Any, fitted: bool) -> str:
    """Why ``parallelism`` cannot be met, naming both numbers and what to change. ``fitted``: the
    backend was adapted to the function's replicas (resolved by name, not passed as an object)."""
    bounds = fn.replicas if fitted else None
    if bounds is not None:
        why = f"function {fn.name!r} has replicas ({bounds.min}, {bounds.max})"
        fix = f"set replicas=(0, {asked}) (or leave replicas unset to use every slot)"
    elif fitted and not backend.remote:
        why = f"the {backend.name} backend has {slots} slot(s) here (one per core)"
        fix = f"set replicas=(0, {asked}) on the function to run more than one per core"
    else:
        why = f"the {backend.name} backend has {slots} slot(s)"
        fix = "give it more workers"
    return (
        f"{wording.option('parallelism', asked)} cannot be met: {why}, so at most {slots} trial(s) run at once; "
        f"{fix}, or lower it ({wording.option('parallelism', slots)})"
    )


def _shown(signature: Mapping[str, Any]) -> str:
    parts = []
    for name, dist in signature.items():
        attrs = dist.get("attributes", {})
        parts.append(f"{name}={dist.get('name', '?').replace('Distribution', '')}{attrs}")
    return "; ".join(parts) or "empty"


def _nop() -> type:
    import optuna

    return optuna.pruners.NopPruner


def _heartbeat_enabled(storage: Any) -> bool:
    from optuna.storages._heartbeat import is_heartbeat_enabled

    return is_heartbeat_enabled(storage)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _failed(kind: str, message: str) -> dict[str, Any]:
    """The fields of a run record that failed for ``kind`` (no traceback: nothing raised here)."""
    return {"state": "failed", "error": {"type": kind, "message": message, "traceback": ""}}


def _utc(moment: datetime | None) -> datetime | None:
    """An Optuna timestamp (naive, local time) as the records keep them (UTC)."""
    return moment.astimezone(timezone.utc) if moment is not None else None


_HOST = socket.gethostname()


def _process_start(pid: int) -> str | None:
    """The start time of a process (Linux /proc), to tell a live driver from a reused pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


def _owner() -> dict[str, Any]:
    return {"host": _HOST, "pid": os.getpid(), "start": _process_start(os.getpid())}


def _dead(owner: Mapping[str, Any]) -> bool:
    """True when ``owner`` names a driver process on this machine that no longer runs."""
    if owner.get("host") != _HOST or not isinstance(owner.get("pid"), int):
        return False  # another machine's driver: left to the heartbeat, where the storage has one
    pid = owner["pid"]
    if pid == os.getpid():
        return owner.get("start") != _process_start(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    start = _process_start(pid)
    return start is not None and owner.get("start") is not None and start != owner["start"]


@contextlib.contextmanager
def _optimize_loop(study: Any) -> Iterator[None]:
    """Mark this thread as Optuna's optimize loop while the search asks and tells.

    Samplers stop a study (``GridSampler`` when the grid is exhausted) through ``Study.stop``, which
    Optuna allows only inside its own loop; the heartbeat warning of ``ask`` is also meant for it.
    """
    local = study._thread_local
    before = getattr(local, "in_optimize_loop", False)
    local.in_optimize_loop = True
    study._stop_flag = False
    try:
        yield
    finally:
        local.in_optimize_loop = before


class _Loop:
    def __init__(self, search: Search, staged: dict, parallelism: int, progress: Callable | None):
        from optuna.trial import TrialState

        self.s = search
        self.staged = staged
        self.study = search.study
        self.storage = search.storage
        self.parallelism = parallelism if search.n_trials is None else max(1, min(parallelism, search.n_trials))
        self.on_progress = progress
        # One trial queued in the engine behind each running one: a freed worker starts the next trial
        # at once instead of waiting for the driver to tell, create and submit it. Trials are sampled
        # where they start (TrialScope), so a queued trial sees every result told before it starts.
        # Only when the engine's slots are what bounds the parallelism (queued runs must not run
        # beside the others), and only up to one per slot counting those a larger parallelism queues.
        backend = search.driver.backend
        slots = backend.slots
        queueable = not backend.in_process and self.parallelism >= slots
        self.prefetch = max(0, 2 * slots - self.parallelism) if queueable else 0
        self.slots = max(1, slots)
        self.batching = backend.batches and not backend.in_process
        self.told_on_workers = search.tell_where_run and not backend.in_process
        self.durations: collections.deque[float] = collections.deque(maxlen=max(4, 2 * self.slots))
        self.tasks: dict[int, int] = {}  # engine task -> its trials in flight
        self.launched = 0
        self.inflight: dict[str, _InFlight] = {}
        self.dropped: set[str] = set()  # runs the early stop cancelled while pending (see _drop_queued)
        self.finished: queue.SimpleQueue = queue.SimpleQueue()
        self.stopped: str | None = None
        self.owner = _owner()
        trials = self.study.get_trials(deepcopy=False)
        # Failed trials use up no budget of a later search: a rerun after fixing the handler runs
        # n_trials again instead of nothing (this search's own failures do count, below).
        done = sum(1 for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED))
        others = sum(1 for t in trials if t.state == TrialState.RUNNING)
        self.budget = None if search.n_trials is None else max(0, search.n_trials - done - others)
        self.asked = 0
        self.failures = 0
        self.first_failure: tuple[int, str] | None = None  # (trial number, message)
        self.deadline = None if search.timeout is None else time.monotonic() + search.timeout
        self.progress = Progress(search.study_name, search.n_trials, done=done)
        self._update_best()
        self.next_beat = 0.0

    # -- the loop -------------------------------------------------------------------------------
    def run(self) -> TuneResult:
        self.parent = self._parent_record()
        # Which parent run is this driver's: a resume after its death mends that run's children.
        self.study.set_user_attr(self.s.driver_key, {**self.owner, "active": True, "parent": self.parent["uid"]})
        try:
            with _optimize_loop(self.study):
                while True:
                    while self._may_ask():
                        self._launch()
                    if not self.inflight:
                        break
                    try:
                        handle = self.finished.get(timeout=self._wait())
                    except queue.Empty:
                        self._beat()
                        continue
                    self._tell(handle)
                    while True:  # tell every run that ended meanwhile before asking again
                        try:
                            self._tell(self.finished.get_nowait())
                        except queue.Empty:
                            break
                    if self.stopped is not None:
                        self._drop_queued()
                    self._beat()  # throttled: busy searches keep their heartbeats too
        except KeyboardInterrupt:
            self._abort("cancelled", None)
            raise
        except BaseException as exc:
            self._abort("failed", exc)
            raise
        if self.stopped is None:
            self.stopped = "n_trials" if not self.study._stop_flag else "grid"
        result = TuneResult(self.study, self.s.project, parent=self.parent["uid"], stopped=self.stopped)
        if self.progress.failed and not (self.progress.completed or self.progress.pruned):
            error = SearchFailedError(self._all_failed_message(), result)
            self._write_parent("failed", {"type": type(error).__name__, "message": str(error), "traceback": ""})
            raise error
        self._finish_parent()
        return result

    def _all_failed_message(self) -> str:
        number, message = self.first_failure or (None, getattr(self, "last_error", ""))
        stop = f" (stopped by max_failures={self.s.max_failures})" if self.stopped == "max_failures" else ""
        failed = self.progress.failed
        return (
            f"{'all ' if failed > 1 else ''}{failed} trial{'s' if failed > 1 else ''} of study {self.s.study_name!r} "
            f"failed, none completed{stop}; first failure (trial {number}): {message} (parent run {self.parent['uid']})"
        )

    def _drop_queued(self) -> None:
        """The search stops early: runs queued in the engine that have not started are cancelled
        (their trials go back to waiting, see _tell); running ones finish. A run that starts on
        its worker just as it is cancelled is cut short by the search, not failed by its trial: its
        trial goes back to waiting too."""
        for item in list(self.inflight.values()):
            if item.handle.state == "pending":
                self.dropped.add(item.handle.uid)
                item.handle.cancel()

    def _release(self, trial: Any) -> None:
        """Give a trial that never ran back to the study's queue (WAITING): the next search on the
        study runs it, and it counts for no one's n_trials meanwhile."""
        from optuna.trial import TrialState

        with contextlib.suppress(Exception):
            self.storage.set_trial_state_values(trial._trial_id, state=TrialState.WAITING)

    def _may_ask(self) -> bool:
        if self.stopped is not None or len(self.tasks) >= self.parallelism + self.prefetch:
            return False
        if self.study._stop_flag:
            self.stopped = "grid"
            return False
        if self.budget is not None and self.asked >= self.budget:
            return False
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self.stopped = "timeout"
            return False
        return True

    def _wait(self) -> float:
        wait = storages.HEARTBEAT_INTERVAL if self.s.heartbeat else 1.0
        if self.deadline is not None:
            wait = min(wait, max(0.05, self.deadline - time.monotonic()))
        return wait

    def _beat(self) -> None:
        """Heartbeats of our running trials, and failing other drivers' stale ones (RDB storages)."""
        if not self.s.heartbeat or time.monotonic() < self.next_beat:
            return
        self.next_beat = time.monotonic() + storages.HEARTBEAT_INTERVAL / 2
        for item in self.inflight.values():
            self.storage.record_heartbeat(item.trial._trial_id)
        import optuna

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(self.study)

    # -- one engine task: a trial, or a batch of short ones ----------------------------------------
    def _batch_size(self) -> int:
        """Trials for the next engine task: one until every slot's first trial has shown how long
        a trial takes, then as many as ``shoal.batch_size`` sends for runs that short."""
        size = 1
        if self.batching and len(self.durations) >= self.slots:
            remaining = self.budget - self.asked if self.budget is not None else None
            size = batching.batch_size(list(self.durations), remaining, self.slots)
        if self.budget is not None:
            size = min(size, self.budget - self.asked)
        return max(1, size)

    def _launch(self) -> None:
        s = self.s
        trials, records, scopes = [], [], []
        for _ in range(self._batch_size()):
            if trials and self.study._stop_flag:
                break
            trial, record, scope = self._new_trial()
            trials.append(trial)
            records.append(record)
            scopes.append(scope)
        s.project.store.create_runs(records)
        bound = dict(s.space.constants)  # the records get the sampled values when the runs end
        handles = s.driver.launch_many(
            records, self.staged, [bound] * len(records), scopes=scopes, batch_size=len(records)
        )
        task = self.launched
        self.launched += 1
        self.tasks[task] = len(handles)
        for trial, handle in zip(trials, handles):
            self.inflight[handle.uid] = _InFlight(trial, handle, task)
            handle.add_done_callback(self.finished.put)
        self.progress.running = min(len(self.inflight), self.parallelism)
        self._report()

    def _new_trial(self) -> tuple[Any, dict[str, Any], TrialScope]:
        """Ask a trial and prepare its run record; sampled where it runs (see TrialScope)."""
        s = self.s
        trial = self.study.ask()
        self.asked += 1
        if s.heartbeat:
            self.storage.record_heartbeat(trial._trial_id)
        record = s.driver.new_record(dict(s.space.constants), self.staged, parent=self.parent["uid"],
                                     iteration=trial.number, labels={"study": s.study_name})
        # Link trial and run first: a driver killed from here on leaves enough to mend both at resume.
        self.storage.set_trial_user_attr(
            trial._trial_id, "shoal", {"run": record["uid"], "parent": self.parent["uid"], "driver": self.owner}
        )
        in_process = s.driver.backend.in_process
        scope = TrialScope(
            storage=s.ref,
            study_name=s.study_name,
            trial_id=trial._trial_id,
            objective=s.objective,
            distributions=s.distributions,
            sampler=s.trial_sampler(trial.number),
            pruner=self.study.pruner,
            tell=self.told_on_workers,
            study=self.study if in_process else None,
        )
        return trial, record, scope

    def _tell(self, handle: "RunHandle") -> None:
        from optuna.trial import TrialState

        item = self.inflight.pop(handle.uid, None)
        if item is None:
            return
        self.tasks[item.task] -= 1
        if not self.tasks[item.task]:
            del self.tasks[item.task]
        run = handle.result(0)
        trial = item.trial
        if run.state in ("completed", "pruned") and run.started_at is not None and run.ended_at is not None:
            self.durations.append((run.ended_at - run.started_at).total_seconds())
        if run.state == "cancelled" and (run.started_at is None or run.uid in self.dropped):  # queued, then dropped
            self._release(trial)
            self.progress.running = min(len(self.inflight), self.parallelism)
            self._report()
            return
        if run.state == "pruned":
            self._told(trial, state=TrialState.PRUNED)
            self.progress.pruned += 1
        elif run.state == "completed":
            try:
                values = self.s.objective.values(run.results)
            except Exception as exc:  # noqa: BLE001 - a non-numeric objective: that trial fails
                self._fail_trial(trial, str(exc), run_uid=run.uid)
            else:
                frozen = self._told(trial, values=values if self.s.objective.multi else values[0])
                if frozen is not None and frozen.state == TrialState.FAIL:  # NaN objective
                    self._count_failure(f"objective is not a number: {values}", trial.number)
                else:
                    self.progress.completed += 1
                    if self.s.stop_when is not None and self.s.stop_when.reached(run.results):
                        self.stopped = "stop_when"
        else:
            error = run.error or {}
            message = f"{error.get('type', run.state)}: {error.get('message', '')}".strip()
            self.storage.set_trial_user_attr(trial._trial_id, "shoal_error", message)
            self._told(trial, state=TrialState.FAIL)
            self._count_failure(message, trial.number)
        self.progress.done += 1
        self.progress.running = min(len(self.inflight), self.parallelism)
        self._update_best()
        self._report()

    def _told(self, trial: Any, **kwargs: Any) -> Any:
        import optuna

        if self.told_on_workers:
            frozen = self.storage.get_trial(trial._trial_id)
            if frozen.state.is_finished():  # told where it ran
                return frozen
        try:
            return self.study.tell(trial, **kwargs)
        except optuna.exceptions.UpdateFinishedTrialError:
            log.warning("study %s: trial %d was already finished (failed as stale?)", self.s.study_name, trial.number)
            return None

    def _fail_trial(self, trial: Any, message: str, run_uid: str | None = None) -> None:
        from optuna.trial import TrialState

        self.storage.set_trial_user_attr(trial._trial_id, "shoal_error", message)
        self._told(trial, state=TrialState.FAIL)
        if run_uid is not None:
            self.s._fail_record(run_uid, "TuningError", message)
        self._count_failure(message, trial.number)
        if run_uid is None:  # never launched: count it here (_tell counts launched ones)
            self.progress.done += 1

    def _count_failure(self, message: str, number: int | None = None) -> None:
        if self.first_failure is None:
            self.first_failure = (number, message)
        self.failures += 1
        self.progress.failed += 1
        self.last_error = message
        if self.s.max_failures is not None and self.failures >= self.s.max_failures:
            self.stopped = "max_failures"

    def _update_best(self) -> None:
        """The best so far, for the progress callback only (a storage read: skipped without one)."""
        if self.s.objective.multi or self.on_progress is None:
            return
        try:
            best = self.study.best_trial
        except ValueError:
            return
        self.progress.best_value, self.progress.best_trial = best.value, best.number

    def _report(self) -> None:
        if self.on_progress is not None:
            self.on_progress(replace(self.progress))

    # -- parent run -----------------------------------------------------------------------------
    def _parent_record(self) -> dict[str, Any]:
        s = self.s
        params = {
            "study": s.study_name,
            "objective": s.objective.selectors(),
            "strategy": s.plan.name,
            "n_trials": s.n_trials,
            "space": s.space.describe(),
            "storage": s.ref.describe(),
        }
        record = s.driver.new_record(params, self.staged, labels={"study": s.study_name, "kind": "tune"})
        record["state"] = "running"
        record["started_at"] = _now()
        s.project.store.create_runs([record])
        return record

    def _abort(self, state: str, exc: BaseException | None) -> None:
        """Cancel runs in flight, fail their trials, and finish the parent run as ``state``."""
        from optuna.trial import TrialState

        handles = [item.handle for item in self.inflight.values()]
        for handle in sorted(handles, key=lambda h: h.state == "running"):
            handle.cancel()
        for handle in handles:
            handle.wait(30)
        note = "search interrupted (Ctrl-C)" if state == "cancelled" else f"search failed: {exc}"
        for item in list(self.inflight.values()):
            run = item.handle.result(0) if item.handle.done() else None
            if run is not None and run.state == "cancelled" and run.started_at is None:
                self._release(item.trial)  # queued, never ran
                continue
            with contextlib.suppress(Exception):
                self.storage.set_trial_user_attr(item.trial._trial_id, "shoal_error", note)
                self._told(item.trial, state=TrialState.FAIL)
        self.inflight.clear()
        error = {"type": "KeyboardInterrupt" if exc is None else type(exc).__name__, "message": note, "traceback": ""}
        with contextlib.suppress(Exception):
            self._write_parent(state, error)

    def _finish_parent(self) -> None:
        state, error = "completed", None
        if self.stopped == "max_failures":
            state = "failed"
            error = {
                "type": "TuningError",
                "message": f"stopped after {self.failures} failed trials (max_failures={self.s.max_failures}); "
                f"last: {getattr(self, 'last_error', '')}",
                "traceback": "",
            }
        self._write_parent(state, error)

    def _write_parent(self, state: str, error: dict | None) -> None:
        from optuna.trial import TrialState

        results: dict[str, Any] = {
            "stopped": self.stopped or state,
            "completed": self.progress.completed,
            "pruned": self.progress.pruned,
            "failed": self.progress.failed,
            "trials": len(self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))),
        }
        if self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if self.s.objective.multi:
                results["pareto"] = [
                    {"trial": t.number, "values": list(t.values), "params": t.params, "run": (t.user_attrs.get("shoal") or {}).get("run")}
                    for t in self.study.best_trials
                ]
            else:
                best = self.study.best_trial
                results.update(
                    best_value=best.value,
                    best_params=dict(best.params),
                    best_run=(best.user_attrs.get("shoal") or {}).get("run"),
                    best_trial=best.number,
                )
        fields = {"state": state, "results": _json(results), "error": error, "ended_at": _now()}
        import threading

        done = threading.Event()
        self.s.driver.recorder.finished(self.parent["uid"], fields, [], lambda problem: done.set())
        with contextlib.suppress(Exception):
            self.study.set_user_attr(self.s.driver_key, {**self.owner, "active": False})
        done.wait()


def _json(value: Any) -> Any:
    from shoal.runner import recordable

    return recordable(value)
