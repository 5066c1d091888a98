"""``shoal.Function``: an immutable, versioned, runnable function (code + operational spec).

Built on the driver (workers get its code and spec in a ``RunTask``). Its option checks live in
``shoal.function_options``, its document form (``to_dict``/``from_yaml``...) in
``shoal.function_documents``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from .by_value import defined_by_loaded_code, main_script_object, pickling_by_value
from .code import Code, capture, load_handler, load_object, source_from_file
from .errors import CodeError, SpecError
from .function_documents import function_from_dict, function_from_yaml, function_to_dict, function_to_yaml
from .function_options import check_description, check_handler, check_labels, check_name, split_options
from .hashing import function_hash
from .spec import FunctionSpec, build_spec, canonical_spec
from .step_cache import CacheOptions

if TYPE_CHECKING:  # pragma: no cover
    from .project import Project
    from .runs import Run, RunHandle


def _pipeline_body() -> Any:
    """The pipeline run whose body is running here (``shoal.pipelines.session.active_pipeline``), if
    any. None while that module is not loaded, since a body needs it: an import statement in every
    ``submit`` cost a tenth of a step's submission (measured)."""
    session = sys.modules.get("shoal.pipelines.session")
    return session.active_pipeline() if session is not None else None


class Function:
    """Code plus everything needed to run it; immutable, identified by ``hash``.

    Calling the object calls the plain Python function. ``run``/``submit``/``map`` execute it as
    recorded runs on a backend.
    """

    __slots__ = ("_name", "_handler", "_spec", "_code", "_callable", "_description", "_labels", "_hash")
    _name: str
    _handler: str
    _spec: FunctionSpec
    _code: Code | None  # captured from _callable on first use
    _callable: Callable | None  # rebuilt from _code on first use
    _description: str | None
    _labels: dict[str, str]
    _hash: str | None  # computed on first use

    def __init__(
        self,
        name: str,
        handler: str,
        spec: FunctionSpec | None = None,
        *,
        code: Code | None = None,
        callable: Callable | None = None,  # noqa: A002 - the natural name
        description: str | None = None,
        labels: Mapping[str, str] | None = None,
    ):
        if code is None and callable is None:
            raise SpecError("a Function needs code or a callable")
        set_ = object.__setattr__
        set_(self, "_name", check_name(name))
        set_(self, "_handler", check_handler(handler))
        set_(self, "_spec", spec if spec is not None else FunctionSpec())
        set_(self, "_code", code)
        set_(self, "_callable", callable)
        set_(self, "_description", check_description(description))
        set_(self, "_labels", check_labels(labels))
        set_(self, "_hash", None)

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError("shoal.Function is immutable; use fn.with_spec(...) to get a changed copy")

    def __delattr__(self, key: str) -> None:
        raise AttributeError("shoal.Function is immutable; use fn.with_spec(...) to get a changed copy")

    # Immutable, so a copy is the object itself. Pickling (cloudpickle for Dask and Ray) restores the
    # slots directly, since __setattr__ refuses.
    def __copy__(self) -> Function:
        return self

    def __deepcopy__(self, memo: dict) -> Function:
        return self

    def __getstate__(self) -> dict[str, Any]:
        state = {slot: getattr(self, slot) for slot in self.__slots__}
        code = state["_code"]
        if code is not None and pickling_by_value(code.live):
            # Met while its own handler is pickled by value (it calls itself through the decorated
            # name): the callable goes along in that same cloudpickle, the code as text for the hash.
            state["_code"] = replace(code, live=None, by_value=None)
        elif code is not None:
            # Ship the code, not the live callable: it may live in a module only this process has
            # (``shoal_code_...``, ``__main__``); the receiver rebuilds it from the code (by value
            # for the driver's script) like any worker.
            state["_callable"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        for slot, value in state.items():
            object.__setattr__(self, slot, value)

    # -- identity -----------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self._name

    @property
    def handler(self) -> str:
        return self._handler

    @property
    def spec(self) -> FunctionSpec:
        """A copy: the spec's mappings (env, defaults, ...) are mutable, and editing them in place
        must not change this Function behind its cached hash."""
        return self._spec.model_copy(deep=True)

    @property
    def description(self) -> str | None:
        return self._description

    @property
    def labels(self) -> dict[str, str]:
        return dict(self._labels)

    @property
    def code(self) -> Code:
        """The shipped code, captured from the callable's file on first use."""
        code = self._code
        if code is None:
            assert self._callable is not None  # __init__ refuses neither code nor a callable
            code = capture(self._callable)
            object.__setattr__(self, "_code", code)
        return code

    @property
    def hash(self) -> str:
        """SHA-256 (64 hex chars) over handler, code and behavioural spec; see ``shoal.hashing``."""
        value = self._hash
        if value is None:
            value = function_hash(self._handler, self.code.fingerprint, canonical_spec(self._spec))
            object.__setattr__(self, "_hash", value)
        return value

    @property
    def replicas(self):
        """The worker bounds (``Replicas``), or None when unset: every slot the backend has."""
        return self._spec.replicas  # frozen and holds no mappings: safe to share

    @property
    def resources(self):
        return self._spec.resources  # frozen and holds no mappings: safe to share

    @property
    def callable(self) -> Callable:
        """The plain Python function (rebuilt from the shipped code when not defined here)."""
        func = self._callable
        if func is None:
            func = load_handler(self.code, self._handler)
            object.__setattr__(self, "_callable", func)
        return func

    @property
    def __shoal_callable__(self) -> Callable:
        return self.callable

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.callable(*args, **kwargs)

    def __repr__(self) -> str:
        short = self.hash[:12] if (self._hash or self._code) else "…"
        return f"<shoal.Function {self._name} handler={self._handler} hash={short}>"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Function):
            return NotImplemented
        return (self._name, self.hash, self._description, self._labels) == (
            other._name,
            other.hash,
            other._description,
            other._labels,
        )

    def __hash__(self) -> int:
        return hash((self._name, self.hash))

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_callable(cls, func: Callable, name: str | None = None, **options: Any) -> Function:
        """A function from a live Python callable; its code is captured on first use of ``code``/``hash``."""
        if isinstance(func, Function):  # decorating again: the new options apply on top
            return func.with_spec(**options, **({"name": name} if name else {}))
        if not callable(func) or not isinstance(getattr(func, "__qualname__", None), str):
            raise SpecError(
                f"@shoal.function needs a Python function (def or lambda), got {type(func).__name__}; wrap it in a def"
            )
        spec_fields, metadata = split_options(options)
        spec = build_spec(spec_fields)
        return cls(name or func.__name__, func.__qualname__, spec, callable=func, **metadata)

    @classmethod
    def from_file(cls, path: str | os.PathLike, handler: str, name: str | None = None, **options: Any) -> Function:
        """A function from ``handler`` in the source file ``path`` (the whole file is shipped).

        If the handler is decorated with ``@shoal.function(...)``, its options are the base that
        ``options`` override.
        """
        code = source_from_file(path, handler)
        found = main_script_object(code.origin, handler) if code.origin else None  # files have an origin
        if found is not None:  # the script being run: take its handler, do not run the script again
            code = code.with_live(found.callable if isinstance(found, Function) else found)
        else:
            try:
                found = load_object(code, handler)
            except CodeError as exc:
                if not isinstance(exc.__cause__, ImportError):
                    raise
                found = None  # a package only the workers have: ship the code unchecked
            live = found.callable if isinstance(found, Function) else found
            if defined_by_loaded_code(live):  # loaded here: workers get it by value, never run the file
                code = code.with_live(live)
        base = found.spec if isinstance(found, Function) else None
        spec_fields, metadata = split_options(options, base)
        if isinstance(found, Function):
            spec = build_spec(spec_fields, base=base)
            metadata.setdefault("description", found.description)
            metadata.setdefault("labels", found.labels)
            kind = type(found) if isinstance(found, cls) else cls  # a Pipeline stays a Pipeline
            return kind(name or found.name, handler, spec, code=code, callable=found.callable, **metadata)
        spec = build_spec(spec_fields)
        return cls(name or handler.split(".")[-1], handler, spec, code=code, callable=found, **metadata)

    @classmethod
    def from_hub(cls, ref: str, *, project: Project | None = None) -> Function:
        """A verified function from a hub: ``hub://[source/]name[:version][@hash]`` (``hub://`` optional).

        Sources are the project's ``hubs:`` then the hub shipped in shoal; the resolved
        ``hub://source/name:version@hash`` is in ``fn.labels["hub"]``. See ``shoal.hub``.
        """
        from .hub import load_function

        return load_function(ref, project=project)

    def with_spec(self, **changes: Any) -> Function:
        """A new Function with some spec fields (or name, description, labels) changed."""
        name = changes.pop("name", self._name)
        spec_fields, metadata = split_options(changes, self._spec)
        spec = build_spec(spec_fields, base=self._spec)
        return Function(
            name,
            self._handler,
            spec,
            code=self._code,
            callable=self._callable,
            description=metadata.get("description", self._description),
            labels=metadata.get("labels", self._labels),
        )

    def to_dict(self) -> dict[str, Any]:
        """A plain document (YAML/JSON-able) that ``from_dict`` turns back into an equal Function."""
        return function_to_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, verify: bool = True) -> Function:
        """The Function a ``to_dict`` document describes; with ``verify``, a recorded ``hash`` must match."""
        return function_from_dict(cls, data, verify=verify)

    def to_yaml(self, path: str | os.PathLike | None = None) -> str:
        """The ``to_dict`` document as YAML text, also written to ``path`` when given."""
        return function_to_yaml(self, path)

    @classmethod
    def from_yaml(cls, source: str | os.PathLike) -> Function:
        """From a YAML file path or YAML text."""
        return function_from_yaml(cls, source)

    # -- execution ----------------------------------------------------------------------------
    def run(
        self,
        params: Mapping[str, Any] | Any = None,
        inputs: Mapping[str, Any] | None = None,
        *,
        backend: Any = None,
        project: Project | None = None,
        watch: bool = True,
        cache: bool = False,
        refresh: bool = False,
        cache_ignore: Iterable[str] | None = None,
        cache_expires: float | timedelta | None = None,
        cache_version: str | int | None = None,
    ) -> Run:
        """Run once and wait; returns the recorded Run (state completed, failed, cancelled or cached).

        ``params`` is a mapping of name -> value, or one value of any other type for the parameter
        ``f(value)`` would fill, as Ray's ``f.remote(x)`` (see ``map``); None means no parameters.

        ``cache=True`` reuses a completed run of this function version with the same parameters and
        input contents (its artifacts still present) instead of running: the run is recorded
        ``cached``, naming the run it reuses. ``refresh=True`` runs anyway (the new run is the one
        reused next), ``cache_ignore`` leaves parameters out of the key, ``cache_expires`` (seconds
        or a timedelta) bounds the age of a reusable run, ``cache_version`` is part of the key.
        """
        from .runner import run_function

        options = CacheOptions.from_call(cache, refresh, cache_ignore, cache_expires, cache_version)
        return run_function(self, params, inputs, backend=backend, project=project, watch=watch, cache=options)

    def submit(
        self,
        params: Mapping[str, Any] | Any = None,
        inputs: Mapping[str, Any] | None = None,
        *,
        backend: Any = None,
        project: Project | None = None,
        watch: bool = False,
        cache: bool | None = None,
        refresh: bool = False,
        cache_ignore: Iterable[str] | None = None,
        cache_expires: float | timedelta | None = None,
        cache_version: str | int | None = None,
    ) -> RunHandle:
        """Start a run and return at once with a handle (``.result()``, ``.wait()``, ``.cancel()``);
        ``params`` and the cache options as for ``run``: ``fn.submit(x)`` is Dask's
        ``client.submit(f, x)``. With ``cache=True``, a run whose key another driver is running is
        recorded pending and its handle resolves once that driver's outcome is known."""
        steps = _pipeline_body()
        if steps is not None:  # inside a pipeline's body: a step, cached unless cache=False
            cached = (cache, refresh, cache_ignore, cache_expires, cache_version)
            return steps.submit(self, params, inputs, backend=backend, cache=cached)
        from .runner import submit_function

        options = CacheOptions.from_call(cache, refresh, cache_ignore, cache_expires, cache_version)
        return submit_function(self, params, inputs, backend=backend, project=project, watch=watch, cache=options)

    def map(
        self,
        items: Iterable[Any],
        *iterables: Iterable[Any],
        inputs: Mapping[str, Any] | None = None,
        backend: Any = None,
        project: Project | None = None,
        watch: bool = False,
        batch_size: int | str = "auto",
        cache: bool | None = None,
        refresh: bool = False,
        cache_ignore: Iterable[str] | None = None,
        cache_expires: float | timedelta | None = None,
        cache_version: str | int | None = None,
    ) -> list[Run]:
        """One child run per item under one parent run; results come back in input order.

        Each item is one of:

        - a mapping: always a parameter set, ``{"x": 1, "lr": 0.1}``, whose keys must name
          parameters. So a handler whose one parameter takes a dict gets each dict wrapped,
          ``fn.map([{"record": d} for d in dicts])``; an unwrapped dict whose keys are not all
          parameter names is an error that says so (one whose keys are is a parameter set);
        - any other value (a number, a list, a NumPy row of ``df.values``, None...): the value of the
          parameter ``f(x)`` would fill, as Dask's ``client.map(f, xs)`` and Ray's
          ``[f.remote(x) for x in xs]`` do: the handler's first positional parameter after its
          context, skipping names given by ``inputs=``; that is its single parameter, or its first
          required one.

        ``fn.map(xs, ys)`` zips, as ``client.map(f, xs, ys)``: run i gets ``f(xs[i], ys[i])``, the
        values in order onto the positional parameters (every element is a value, mappings too);
        the iterables must have equal lengths. ``inputs`` is keyword-only.

        NumPy arrays (up to ``shoal.numpy_params.MAX_ARRAY_ELEMENTS`` elements) and NumPy/pandas
        scalars are recorded as JSON and reach the handler as they were given; bigger data goes
        through ``inputs=``.

        ``batch_size``: runs per engine task on Dask and Ray. ``"auto"`` (default) batches runs
        shorter than a few tens of milliseconds, as joblib does; 1 sends each run as its own task.

        The cache options are those of ``run``, per child run.
        """
        steps = _pipeline_body()
        if steps is not None:  # inside a pipeline's body: one step per item
            cached = (cache, refresh, cache_ignore, cache_expires, cache_version)
            return steps.map(self, items, iterables, inputs, backend=backend, cache=cached)
        from .runner import map_function

        return map_function(
            self,
            items,
            inputs,
            backend=backend,
            project=project,
            watch=watch,
            batch_size=batch_size,
            iterables=iterables,
            cache=CacheOptions.from_call(cache, refresh, cache_ignore, cache_expires, cache_version),
        )

    def deploy(
        self,
        backend: Any = "local",
        *,
        name: str | None = None,
        host: str = "127.0.0.1",
        port: int = 8000,
        project: Project | None = None,
        scaling: Mapping[str, Any] | None = None,
        max_ongoing_requests: int | None = None,
        max_queued_requests: int | None = None,
    ) -> Any:
        """Serve this function over HTTP at ``http://host:port/<name>`` and return a ``shoal.services.Service``.

        ``backend="ray"`` (or ``"ray://host:10001"``, or a shoal Ray backend object) makes a Ray Serve
        application that autoscales between the function's replicas (min 0 scales to zero) with fast
        defaults that ``scaling`` (Ray Serve autoscaling knobs) overrides; ``"local"`` serves it from
        one uvicorn process. The JSON body of a request is the parameters, checked as a run's; the
        return value is the answer. The same hash again is a no-op; a new hash rolls in place.
        ``max_ongoing_requests`` / ``max_queued_requests`` bound a replica's concurrent and waiting
        requests as Ray Serve's do; past both a request is answered HTTP 503.
        """
        from .services import deploy

        return deploy(
            self,
            backend,
            name=name,
            host=host,
            port=port,
            project=project,
            scaling=scaling,
            max_ongoing_requests=max_ongoing_requests,
            max_queued_requests=max_queued_requests,
        )

    def tune(self, space: Mapping[str, Any] | None = None, **options: Any) -> Any:
        """Run an Optuna search whose trials are runs of this function (``shoal.tuning.tune``):
        ``fn.tune({"lr": Float(1e-4, 1, log=True)}, objective="max.accuracy", n_trials=50)``, or for
        an Optuna objective (``def objective(trial)``) ``fn.tune(n_trials=50, direction="maximize")``."""
        from shoal.tuning import tune

        return tune(self, space, **options)


def function(name: Callable | str | None = None, **options: Any) -> Any:
    """Decorator turning a plain Python function into a ``shoal.Function``.

    Usable bare (``@shoal.function``) or with options (``@shoal.function("train", replicas=(0, 4),
    cpu="500m", requirements=["numpy"])``). Options: requirements, image, env, cpu, memory, gpu,
    resources, replicas, node_selector, affinity, tolerations, spot, priority_class, volumes,
    backend, timeout, retries, defaults, description, labels.
    """
    if callable(name):
        return Function.from_callable(name, **options)

    def decorate(func: Callable) -> Function:
        return Function.from_callable(func, name, **options)

    if name is not None and not isinstance(name, str):
        raise SpecError("the first argument of @shoal.function is the function's name (a string)")
    # Fail at decoration time, not at the first run, for bad options.
    spec_fields, _ = split_options(dict(options))
    build_spec(spec_fields)
    return decorate
