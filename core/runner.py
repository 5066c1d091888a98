"""The driver side of running: the entry points of ``fn.run``/``fn.submit``/``fn.map`` and the
``Driver`` that checks, records and launches (sending and collecting: ``shoal.dispatch``).

The same path serves every backend: parameters are checked and the function version saved before
anything runs; a pending record is written; the backend runs ``execute(task)`` somewhere and hands
back an outcome; failed attempts are resubmitted while ``retries`` allow; the final outcome is
recorded (by the Recorder) before the handle resolves.
"""

from __future__ import annotations

import os
import random
import threading
import weakref
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from . import batching, secrets
from .artifacts import KEY_PATTERN, Artifact
from .cached_launch import launch_cached, submit_cached
from .dispatch import Dispatcher, recordable
from .errors import CodeError, ParamError
from .execution import error_dict
from .gc_freeze import older_objects_frozen
from .inputs import store_input
from .numpy_params import refuse_table_items
from .params import bind, function_label, values_as_params
from .runs import OK_STATES, Run, RunHandle
from .spec import gpus_per_run
from .step_cache import CacheOptions

if TYPE_CHECKING:  # pragma: no cover
    from shoal.backends.base import Backend

    from .function import Function
    from .project import Project


_uids = random.Random(os.urandom(16))
_uids_lock = threading.Lock()
os.register_at_fork(after_in_child=lambda: _uids.seed(os.urandom(16)))


# Function hashes whose requirements each backend was found to meet (kept here, not on the backend:
# it is the driver's knowledge); an entry goes with its backend.
_requirements_checked: weakref.WeakKeyDictionary[Backend, set[str]] = weakref.WeakKeyDictionary()
_checked_lock = threading.Lock()


def new_uid() -> str:
    """A random 128-bit hex uid (from a generator seeded once by the OS: os.urandom per run is slow
    on some virtual machines)."""
    with _uids_lock:
        return f"{_uids.getrandbits(128):032x}"


def new_uids(count: int) -> list[str]:
    """``count`` uids as ``new_uid`` makes them, taking the lock once (a map's children)."""
    with _uids_lock:
        bits = [_uids.getrandbits(128) for _ in range(count)]
    return [f"{value:032x}" for value in bits]


def resolve_backend(fn: Function, backend: Any, project: Project) -> Backend:
    """A Backend object as given; for a name, the backend its registered engine class gives this
    function (``Backend.for_function``: by default the shared embedded one, adapted to the replicas;
    a function that sets none gets every slot the engine has)."""
    from shoal import backends

    if isinstance(backend, backends.Backend):
        return backend
    name = backend or fn.spec.backend or project.default_backend or "local"
    return backends.for_function(name, fn, project)


class Driver(Dispatcher):
    """Runs of one function on one backend within one project: checks parameters, stages inputs,
    makes the records; sending and recording outcomes is the ``Dispatcher``'s part."""

    def __init__(self, fn: Function, project: Project, backend: Backend, *, resolve_secrets: bool | None = None):
        """``resolve_secrets``: look up the values of the env's secret references here (default:
        unless the backend's pods get them from Kubernetes); an unresolvable one is a SecretError
        before anything is recorded."""
        self.fn = fn
        self.project = project
        self.backend = backend
        self.spec = fn.spec  # one copy for all runs of this driver
        self.task_env = {k: v for k, v in self.spec.env.items() if isinstance(v, str)}
        if resolve_secrets is None:
            resolve_secrets = not getattr(backend, "pod_secrets", False)
        references = {k: v for k, v in self.spec.env.items() if not isinstance(v, str)}
        self.task_secrets = secrets.resolve(references, project) if resolve_secrets else secrets.SecretValues()
        self.recorder = project.recorder
        project.watch_backend(backend)  # its scaling events go to the project's records
        self.task_callable = fn.callable if backend.in_process else None
        self.task_gpus = gpus_per_run(self.spec.resources)
        # A function imported from a hub: its resolved hub://source/name:version@hash on each run.
        hub = fn.labels.get("hub")
        self._hub_label = {"hub": hub} if hub else {}

    def save_function(self) -> None:
        """Check that the workers have the requirements, then store the function version (once
        per process) before its first run record."""
        self.backend.start()  # an unreachable engine is an error here, before any record
        with _checked_lock:
            checked = _requirements_checked.setdefault(self.backend, set())
            fresh = self.fn.hash not in checked
        if fresh:
            self.backend.ensure_requirements(self.spec.requirements)
            self.backend.ensure_gpus(self.task_gpus, self.fn.name)
            with _checked_lock:
                checked.add(self.fn.hash)
        self.project.functions.ensure_saved(self.fn)

    # -- preparing ----------------------------------------------------------------------------
    def _handler(self):
        try:
            return self.fn.callable
        except CodeError as exc:
            if isinstance(exc.__cause__, ImportError):
                return None  # the driver lacks a worker-side package: check names on the workers
            raise

    def prepare(
        self, params: Mapping[str, Any] | None, inputs: Mapping[str, Any] | None, *, from_text: bool = False
    ) -> tuple[dict[str, Any], dict[str, Artifact]]:
        """Checked parameters and stored inputs; raises before anything is recorded."""
        bound = self.check(params, inputs, from_text=from_text)
        return bound, self.stage_inputs(inputs)

    def check(
        self, params: Mapping[str, Any] | None, inputs: Mapping[str, Any] | None, *, from_text: bool = False
    ) -> dict[str, Any]:
        """Parameters checked and converted against the handler (ParamError otherwise)."""
        if params is not None and not isinstance(params, Mapping):
            raise ParamError(f"params must be a mapping of name -> value, got {type(params).__name__}")
        if inputs is not None and not isinstance(inputs, Mapping):
            raise ParamError(f"inputs must be a mapping of name -> value or path, got {type(inputs).__name__}")
        names = tuple(inputs or {})
        for key in names:
            # An identifier can be a parameter; an artifact key such as MLRun's "data.csv" is read
            # through the context (context.get_input)
            if not isinstance(key, str) or not (key.isidentifier() or KEY_PATTERN.match(key)):
                raise ParamError(
                    f"input names must be identifiers or artifact keys (letters, digits, '_', '-', '.'), got {key!r}"
                )
        clash = sorted(set(names) & set(params or {}))
        if clash:
            raise ParamError(f"{clash[0]!r} is given both as a parameter and as an input; use one")
        handler = self._handler()
        if handler is None:
            return {**self.spec.defaults, **dict(params or {})}
        return bind(
            handler,
            params,
            defaults=self.spec.defaults,
            input_names=names,
            from_text=from_text,
            handler=function_label(self.fn.name, self.fn.handler),
        )

    def plain_params(self, values: tuple[Any, ...], inputs: Mapping[str, Any] | None, call: str) -> dict[str, Any]:
        """Plain values (``fn.map(xs)``, ``fn.run(x)``) as the parameter set they stand for: where
        ``f(x)`` would put them (``shoal.params.values_as_params``)."""
        label = function_label(self.fn.name, self.fn.handler)
        handler = self._handler()
        if handler is None:
            raise ParamError(
                f"{call} got a plain value, but the signature of {label} cannot be read here (its code needs a "
                "package this process lacks); pass parameters as a mapping of name -> value"
            )
        names = tuple(inputs) if isinstance(inputs, Mapping) else ()
        return values_as_params(
            handler, values, input_names=names, defaults=self.spec.defaults, handler=label, call=call
        )

    def stage_inputs(self, inputs: Mapping[str, Any] | None) -> dict[str, Artifact]:
        """Each input as an Artifact stored once by content in the artifact store (values, local
        paths and fsspec URLs alike; an Artifact as it is), with its size and SHA-256: only its
        URL is recorded and shipped."""
        if not inputs:
            return {}
        folder = f"{self.project.name}/inputs"
        store = self.project.artifacts
        return {key: store_input(store, folder, value, key=key) for key, value in inputs.items()}

    def new_record(
        self,
        params: dict[str, Any],
        inputs: dict[str, Artifact],
        *,
        parent: str | None = None,
        iteration: int | None = None,
        labels: Mapping[str, str] | None = None,
        uid: str | None = None,
        created_at: datetime | None = None,
    ) -> dict[str, Any]:
        """A pending run's record; ``uid`` and ``created_at`` default to a new uid and now."""
        return {
            "uid": uid or new_uid(),
            "function": self.fn.name,
            "function_hash": self.fn.hash,
            "state": "pending",
            "params": recordable(params),
            "inputs": {key: artifact.url for key, artifact in inputs.items()},
            "parent": parent,
            "iteration": iteration,
            "backend": self.backend.name,
            "labels": {**self._hub_label, **dict(labels or {})},
            "attempts": 0,
            # set here so the returned Run and the row agree
            "created_at": created_at or datetime.now(timezone.utc),
        }


# -- entry points used by Function.run / submit / map ------------------------------------------------
def open_driver(fn: Function, backend: Any = None, project: Project | None = None) -> Driver:
    """The Driver of ``fn``'s runs on ``backend`` (a Backend, a name, or None for the function's or
    project's default) in ``project`` (default: the current one): what ``fn.run``/``fn.map`` and
    tuning start from."""
    from .code import refuse_runs_while_loading
    from .project import current_project

    refuse_runs_while_loading()  # a function's file being loaded starts no runs (see shoal.code)
    project = project if project is not None else current_project()
    return Driver(fn, project, resolve_backend(fn, backend, project))


def submit_function(
    fn: Function,
    params: Mapping[str, Any] | None,
    inputs: Mapping[str, Any] | None,
    *,
    backend: Any = None,
    project: Project | None = None,
    watch: bool = False,
    from_text: bool = False,
    labels: Mapping[str, str] | None = None,
    call: str = "fn.submit",
    cache: CacheOptions = CacheOptions.OFF,
) -> RunHandle:
    """``params``: a mapping of name -> value, or one value of another type for the parameter
    ``f(value)`` would fill (Ray's ``f.remote(x)``). ``cache``: reuse a completed run of the same
    key instead of running (``shoal.cached_runs``)."""
    driver = open_driver(fn, backend, project)
    plain = params is not None and not isinstance(params, Mapping)
    if plain:
        params = driver.plain_params((params,), inputs, call)
    try:
        bound, staged = driver.prepare(params, inputs, from_text=from_text)
    except ParamError as exc:
        if not plain:
            raise
        assert params is not None  # plain: the one-parameter mapping plain_params built
        (name,) = params
        raise ParamError(
            f"{exc} ({call} gave its value, not a mapping, to the parameter {name!r}; pass a mapping of "
            "name -> value to set others)"
        ) from None
    driver.save_function()
    record = driver.new_record(bound, staged, labels=labels)
    if cache.enabled:
        return submit_cached(driver, record, staged, bound, cache, watch=watch)
    driver.project.store.create_runs([record])
    return driver.launch(record, staged, watch=watch, params=bound)


def run_function(fn: Function, params: Any, inputs: Mapping[str, Any] | None, **options: Any) -> Run:
    """``submit_function`` with the same options (``watch`` defaults to True), then the run once it
    has ended: what ``fn.run`` and ``shoal run`` call."""
    handle = submit_function(fn, params, inputs, **{"watch": True, "call": "fn.run", **options})
    return _wait_all([handle])[0]


def _wait_all(handles: list[RunHandle]) -> list[Run]:
    """Wait for every handle; on Ctrl-C cancel the unfinished ones, let them be recorded, re-raise."""
    try:
        for handle in handles:
            handle.wait()
    except KeyboardInterrupt:
        # Pending ones first: stopping a running run frees a worker that would start the next one.
        for handle in sorted(handles, key=lambda h: h.state == "running"):
            handle.cancel()
        for handle in handles:
            handle.wait(30)
        raise
    return [handle.result() for handle in handles]


@older_objects_frozen()  # a map's many run objects set off no full collections of the whole heap
def map_function(
    fn: Function,
    params_list: Iterable[Mapping[str, Any]],
    inputs: Mapping[str, Any] | None,
    *,
    backend: Any = None,
    project: Project | None = None,
    watch: bool = False,
    batch_size: int | str = "auto",
    iterables: tuple[Iterable[Any], ...] = (),
    cache: CacheOptions = CacheOptions.OFF,
) -> list[Run]:
    """One parent run and one child run per item; children come back in input order.

    An item that is a mapping is a parameter set; any other is a value for the parameter ``f(x)``
    would fill. With ``iterables`` (``fn.map(xs, ys)``) the i-th elements of all of them are the
    values of run i, in order onto the positional parameters, mappings included.
    """
    batch_size = batching.checked_batch_size(batch_size)
    rows = _map_rows(params_list, iterables)
    driver = open_driver(fn, backend, project)
    checked = []
    for index, (values, params) in enumerate(rows):
        try:
            if values is not None:
                params = driver.plain_params(values, inputs, "fn.map")
            checked.append(driver.check(params, inputs))
        except ParamError as exc:
            raise ParamError(f"params[{index}]: {exc}") from None
    staged = driver.stage_inputs(inputs)  # once for all children
    driver.save_function()
    parent = driver.new_record({"map": len(rows)}, staged)
    parent["state"] = "running"
    parent["started_at"] = datetime.now(timezone.utc)
    uids, now = new_uids(len(checked)), datetime.now(timezone.utc)  # the children are made at one moment
    children = [
        driver.new_record(p, staged, parent=parent["uid"], iteration=i, uid=uid, created_at=now)
        for i, (p, uid) in enumerate(zip(checked, uids))
    ]
    if cache.enabled:  # children of the same key as a completed run are recorded cached, not run
        driver.project.store.create_runs([parent])
        handles = launch_cached(driver, children, staged, checked, cache, watch=watch, batch_size=batch_size)
    else:
        driver.project.store.create_runs([parent] + children)
        handles = driver.launch_many(children, staged, checked, watch=watch, batch_size=batch_size)
    try:
        runs = _wait_all(handles)
    except KeyboardInterrupt:
        _finish_parent(driver, parent, [h.result(0) if h.done() else None for h in handles], interrupted=True)
        raise
    _finish_parent(driver, parent, runs)
    return runs


def _map_rows(
    params_list: Iterable[Any], iterables: tuple[Iterable[Any], ...]
) -> list[tuple[tuple[Any, ...] | None, Mapping[str, Any] | None]]:
    """Each run of a map as (plain values, None) or (None, parameter set)."""
    columns = (params_list, *iterables)
    for position, column in enumerate(columns):
        refuse_table_items(column)
        if isinstance(column, (Mapping, str, bytes)) or not isinstance(column, Iterable):
            where = "map" if position == 0 else f"map's iterable {position + 1}"
            keyword = position > 0 and isinstance(column, Mapping)
            raise ParamError(
                f"{where} takes an iterable of values or parameter sets, e.g. [1, 2] or [{{'x': 1}}, {{'x': 2}}], "
                f"got {type(column).__name__}"
                + ("; inputs are keyword-only: fn.map(xs, inputs={...})" if keyword else "")
            )
    if not iterables:
        return [(None, item) if isinstance(item, Mapping) else ((item,), None) for item in params_list]
    lists = [list(column) for column in columns]
    lengths = sorted({len(column) for column in lists})
    if len(lengths) > 1:
        raise ParamError(
            f"map's iterables have different lengths ({', '.join(str(len(c)) for c in lists)}); "
            "give one value per run in each"
        )
    return [(tuple(values), None) for values in zip(*lists)]


def _finish_parent(driver: Driver, parent: dict, runs: list, interrupted: bool = False) -> None:
    counts = {"completed": 0, "failed": 0, "cancelled": 0}
    for run in runs:
        state = run.state if run is not None else "cancelled"
        counts[state] = counts.get(state, 0) + 1
    ended_well = sum(counts.get(state, 0) for state in OK_STATES)  # pruned, cached: normal ends, not failures
    # Every run that did not complete was cancelled (Ctrl-C, or ``shoal runs cancel`` of the map): cancelled.
    cancelled = interrupted or (counts["cancelled"] > 0 and ended_well + counts["cancelled"] == len(runs))
    state = "cancelled" if cancelled else ("completed" if ended_well == len(runs) else "failed")
    error = None
    if state == "failed":
        failed = [r for r in runs if r is not None and not r.ok]
        first = failed[0].error or {}
        error = error_dict(
            "MapError",
            f"{len(failed)} of {len(runs)} runs did not complete; first: iteration "
            f"{failed[0].iteration}: {first.get('type')}: {first.get('message')}",
        )
    fields = {"state": state, "results": counts, "error": error, "ended_at": datetime.now(timezone.utc)}
    done = threading.Event()
    driver.recorder.finished(parent["uid"], fields, [], lambda problem: done.set())
    done.wait()
