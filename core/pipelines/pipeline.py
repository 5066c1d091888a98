"""``shoal.Pipeline``: a function whose body submits steps; ``@shoal.pipeline`` makes one.

A Pipeline is a ``shoal.Function`` of its own kind (``kind: pipeline`` in its document): stored and
versioned by hash like any function, listed in ``shoal.yaml``, run from the command line. Its run
is the parent of its steps' runs and records the graph of steps and references.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from shoal.errors import ParamError, PipelineError, SpecError
from shoal.function import Function
from shoal.gc_freeze import older_objects_frozen

if TYPE_CHECKING:  # pragma: no cover
    from shoal.project import Project
    from shoal.runs import Run


class Pipeline(Function):
    """A function whose body, run on the driver, submits steps (see ``shoal.pipelines``).

    ``run`` runs the body: each ``fn.submit`` in it returns a step handle at once, and
    ``handle.output(key)`` passed to later steps makes the engine wait for the producer. Steps are
    cached by default (``cache=False`` turns it off, ``refresh=True`` reruns them).
    """

    # No __slots__ of its own: a Pipeline keeps the step hashes a document pinned (``pin_steps``)
    # in its __dict__, and Function's pickling (over Function.__slots__) carries them along below.
    document_kind = "pipeline"

    @property
    def hash(self) -> str:
        """The function hash of its code and spec, combined with the hashes of the shoal functions
        its body refers to (``step_hashes``): changing a step's code gives the pipeline a new
        version even where the pipeline's own file is unchanged."""
        value = self._hash
        if value is None:
            from shoal.hashing import function_hash
            from shoal.spec import canonical_spec

            from .step_functions import combined_hash

            base = function_hash(self._handler, self.code.fingerprint, canonical_spec(self._spec))
            value = combined_hash(base, self.step_hashes)
            object.__setattr__(self, "_hash", value)
        return value

    @property
    def step_hashes(self) -> dict[str, str]:
        """``{name: hash}`` of the shoal functions the body refers to, which its hash covers: those
        a document pinned, else found in the body (none where it cannot be loaded here, e.g. it
        needs a package only the workers have)."""
        pinned = self.__dict__.get("_steps")
        if pinned is not None:
            return dict(pinned)
        from shoal.errors import CodeError

        from .step_functions import steps_digest

        try:
            return steps_digest(self.callable, Pipeline)
        except CodeError:
            return {}

    def pin_steps(self, steps: Mapping[str, str]) -> Pipeline:
        """Fix the step hashes its hash covers to those a stored document recorded (so a stored
        version keeps its hash wherever it is loaded); before the hash is first used only."""
        if self._hash is not None:
            raise PipelineError(f"pipeline {self.name!r}: its steps are pinned before its hash is used")
        if not isinstance(steps, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in steps.items()
        ):
            raise SpecError("function document field 'steps' must map step names to function hashes")
        self.__dict__["_steps"] = dict(steps)
        return self

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        if "_steps" in self.__dict__:
            state["_steps"] = self.__dict__["_steps"]
        return state

    def run(  # type: ignore[override]
        self,
        params: Mapping[str, Any] | None = None,
        inputs: Mapping[str, Any] | None = None,
        *,
        backend: Any = None,
        project: Project | None = None,
        from_text: bool = False,
        cache: bool = True,
        refresh: bool = False,
        cache_expires: Any = None,
        cache_version: Any = None,
    ) -> Run:
        """Run the body and every step it submits; returns the pipeline's parent run (completed,
        failed listing its failed steps, or cancelled). Bad input (a step's parameters, a reference
        to another run's step) raises before any step starts."""
        from shoal.step_cache import CacheOptions

        if inputs:
            raise ParamError("a pipeline takes params only; give inputs to its steps (fn.submit(..., inputs={...}))")
        options = CacheOptions.from_call(
            cache=cache, refresh=refresh, cache_expires=cache_expires, cache_version=cache_version
        )
        with older_objects_frozen():  # the steps' many objects set off no full collections of the whole heap
            return run_pipeline(self, params, backend=backend, project=project, cache=options, from_text=from_text)

    def submit(self, *args: Any, **kwargs: Any) -> Any:
        raise PipelineError(f"pipeline {self.name!r} runs on the driver: call {self.name}.run(...), not submit")

    def map(self, *args: Any, **kwargs: Any) -> Any:
        raise PipelineError(f"pipeline {self.name!r} runs on the driver: call {self.name}.run(...) per parameter set")


def pipeline(func: Callable | None = None, /, **options: Any) -> Any:
    """``@shoal.pipeline`` (or ``@shoal.pipeline(name=..., description=...)``): a Pipeline from a
    plain function that submits steps."""

    def wrap(target: Callable) -> Pipeline:
        made = Pipeline.from_callable(target, **options)
        if not isinstance(made, Pipeline):  # decorating a shoal.Function: keep its options
            made = Pipeline(
                made.name,
                made.handler,
                made.spec,
                code=made.code,
                callable=made.callable,
                description=made.description,
                labels=made.labels,
            )
        return made

    return wrap(func) if func is not None else wrap


def run_pipeline(
    fn: Pipeline,
    params: Mapping[str, Any] | None,
    *,
    backend: Any,
    project: Project | None,
    cache: Any,
    from_text: bool = False,
) -> Run:
    from shoal.code import refuse_runs_while_loading
    from shoal.params import bind, function_label
    from shoal.project import current_project
    from shoal.runner import new_uid

    from .session import PipelineRun, active_pipeline

    refuse_runs_while_loading()
    if active_pipeline() is not None:
        raise PipelineError(f"pipeline {fn.name!r} started inside another pipeline's body; submit its steps instead")
    project = project if project is not None else current_project()
    if params is not None and not isinstance(params, Mapping):
        raise ParamError(f"params must be a mapping of name -> value, got {type(params).__name__}")
    bound = bind(
        fn.callable, params, defaults=fn.spec.defaults, from_text=from_text, handler=function_label(fn.name, fn.handler)
    )
    project.store.end_lost_runs()  # a killed driver's open steps end "driver lost": they rerun below
    project.functions.ensure_saved(fn)
    from shoal.dispatch import recordable

    now = datetime.now(timezone.utc)
    record = {
        "uid": new_uid(),
        "function": fn.name,
        "function_hash": fn.hash,
        "state": "running",
        "params": recordable(bound),
        "backend": backend if isinstance(backend, str) else getattr(backend, "name", "") or "",
        "labels": {"shoal.kind": "pipeline"},
        "created_at": now,
        "started_at": now,
    }
    project.store.create_runs([record])
    session = PipelineRun(record, project, backend, cache)
    try:
        value = session.run_body(fn.callable, bound)
        runs = session.wait()
    except KeyboardInterrupt:
        session.cancel_all()
        session.finish(session.finished_runs(), interrupted=True)
        raise
    except (ParamError, PipelineError) as exc:  # bad input: no step of it started
        session.finish(session.wait(), error=exc)
        raise
    except Exception as exc:  # noqa: BLE001 - the body raised: the run fails with its error
        return session.finish(session.wait(), error=exc)
    return session.finish(runs, value=value)
