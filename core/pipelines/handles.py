"""A pipeline run's steps as the driver tracks them (``Step``), and the handle the body gets for
each (``StepHandle``: ``output(key)`` for later steps, ``result()`` to branch)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from shoal.errors import PipelineError
from shoal.runs import Run, RunHandle
from shoal.step_cache import CacheOptions

from .references import OutputRef

if TYPE_CHECKING:  # pragma: no cover
    from shoal.artifacts import Artifact
    from shoal.backends.base import BackendFuture
    from shoal.function import Function

    from .driver_steps import DriverStepLauncher
    from .session import PipelineRun
    from .steps import StepDriver


@dataclasses.dataclass(eq=False)
class Step:
    """One step of a pipeline run, from submission to its recorded run."""

    index: int
    name: str
    fn: Function
    driver: StepDriver | DriverStepLauncher  # an engine task's, or a step run on the driver (a search)
    record: dict[str, Any]
    params: dict[str, Any]  # checked, with references in place
    staged: dict[str, Artifact]  # inputs stored by content
    ref_inputs: dict[str, Any]  # inputs that hold references
    producers: list[str]  # uids of the steps it uses, in order
    edges: list[tuple[str, str]]  # (producer uid, output key)
    cache: CacheOptions
    key: str | None = None  # its cache key, once looked up (None: uncacheable or caching off)
    future: BackendFuture | None = None  # the engine's future of its current attempt
    handle: RunHandle | None = None

    @property
    def uid(self) -> str:
        return self.record["uid"]


class LaunchedStep(Step):
    """A Step once launched (the type of ``PipelineRun.launched``): its handle and future are set."""

    future: BackendFuture
    handle: RunHandle


class StepHandle:
    """What ``fn.submit`` returns inside a pipeline's body: ``output(key)`` references a result or
    artifact of the step for later steps; ``result()`` waits for the step (to branch on it)."""

    def __init__(self, pipeline: PipelineRun | None, step: Step | None, uid: str, name: str, run: str):
        self._pipeline = pipeline
        self._step = step
        self.uid, self.name, self._run = uid, name, run

    def __reduce__(self) -> Any:
        # Pickled (a function that closes over a handle, captured by value): its identity only.
        return (StepHandle, (None, None, self.uid, self.name, self._run))

    @property
    def state(self) -> str:
        handle = self._step.handle if self._step is not None else None
        return handle.state if handle is not None else "pending"

    def output(self, key: str) -> OutputRef:
        if not isinstance(key, str) or not key:
            raise PipelineError(f"output() takes the key of a result or artifact, e.g. output('model'); got {key!r}")
        return OutputRef(self.uid, key, self.name, self._run)

    def done(self) -> bool:
        return self._step is not None and self._step.handle is not None and self._step.handle.done()

    def result(self, timeout: float | None = None) -> Run:
        """Launch what was submitted so far and wait for this step's run."""
        if self._pipeline is None or self._step is None:
            raise PipelineError(f"step {self.name} belongs to a pipeline run of another process; wait for it there")
        self._pipeline.launch_pending()
        assert self._step.handle is not None
        return self._step.handle.result(timeout)

    def __repr__(self) -> str:
        return f"<shoal.{type(self).__name__} {self.name} {self.state}>"


class SearchHandle(StepHandle):
    """What ``shoal.tune(...)`` returns inside a pipeline's body: the search is a step, and its
    outputs are those of its parent run, as MLRun's hyper-parameter run in a workflow: ``best_params``,
    ``best_value``, ``best_trial``, ``best_run`` (a uid), the counts (``completed``, ``pruned``,
    ``failed``), and the best trial's own results and artifacts by their keys (``output("model")``
    is the best trial's model). ``result()`` waits for the search and returns its parent Run."""
