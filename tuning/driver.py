"""tune(): check the search, open its study, put right what a dead driver left, run the loop.

Modules of a search, in the order it runs: ``options`` (the arguments, checked), ``study`` (opened
and matched), ``recovery`` (crash recovery and process identity), ``loop`` (the ask/tell loop, and
its ``progress`` counts; ``asking``: each trial asked already linked to its run), ``parent`` (the
parent run's record), ``records`` (writing run records); Optuna's private attributes are used only
in ``_optuna_compat``.

Resume: the study lives in shared storage, so re-running the same search continues it. Trials left
RUNNING by a driver that died are failed first (at once when that driver ran on this machine and
its process is gone; through Optuna's heartbeat where the storage has one), and retried up to the
function's ``retries`` with Optuna's ``RetryHeartbeatStaleTrialCallback``. Its trials that never
started (queued, or waiting in a batch) go back to the study's queue instead, and its run records
are mended: runs whose trials a worker told get the trial's values, the others fail.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from shoal.errors import ParamError, ShoalWarning, TuningError

from . import _optuna_compat as compat
from . import storage as storages
from . import wording
from .loop import Loop
from .objective import StopWhen
from .options import Settings, int_option, objective_option, timeout_option
from .progress import Progress
from .recovery import ATTR_DRIVER, HOST, Recovery, owner
from .result import TuneResult
from .space import Space
from .study import open_study

if TYPE_CHECKING:  # pragma: no cover
    from shoal.function import Function
    from shoal.project import Project

__all__ = ["ATTR_DRIVER", "Progress", "Search", "tune"]


def tune(
    fn: Function | Callable,
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
    project: Project | None = None,
    inputs: Mapping[str, Any] | None = None,
    progress: Callable[[Progress], None] | None = None,
    cache: bool | None = None,
    refresh: bool = False,
    cache_expires: Any = None,
    cache_version: str | int | None = None,
) -> Any:
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

    Inside a pipeline's body the search is a step (``shoal.tuning.pipeline_step``): it returns a
    ``SearchHandle`` at once, whose ``output("best_params")`` (``best_value``, the best trial's
    results and artifacts...) later steps take, and ``space`` constants and ``inputs`` may hold
    references to other steps' outputs. The step is cached like others: ``cache=False`` turns it off,
    ``refresh=True`` searches again, ``cache_version`` / ``cache_expires`` as for ``fn.submit``.
    """
    from shoal.function import Function
    from shoal.pipelines.session import active_pipeline

    if not isinstance(fn, Function):
        if not callable(fn):
            raise TuningError(f"tune needs a shoal.Function or a Python function, got {type(fn).__name__}")
        fn = Function.from_callable(fn)
    session = active_pipeline()
    cached = (cache, refresh, None, cache_expires, cache_version)
    if session is None and cached != (None, False, None, None, None):
        raise TuningError(
            "cache=, refresh=, cache_expires= and cache_version= apply to a search inside a pipeline's body "
            "(a step); outside one a rerun of the same study resumes it: drop them, or give another study="
        )
    if session is not None:
        from .pipeline_step import search_space

        space, refs = search_space(space)
    search = Search(
        fn,
        Space(space),
        objective_option(fn, objective, direction, directions),
        n_trials=int_option(n_trials, "n_trials", 1),
        timeout=timeout_option(timeout),
        strategy=strategy,
        pruner=pruner,
        parallelism=int_option(parallelism, "parallelism", 1),
        stop_when=StopWhen.parse(stop_when) if stop_when is not None else None,
        max_failures=int_option(max_failures, "max_failures", 1),
        seed=int_option(seed, "seed", 0),
        study=study,
    )
    if session is not None:
        from .pipeline_step import submit_search

        if project is not None and project is not session.project:
            raise TuningError("a search in a pipeline's body runs in the pipeline's project; drop project=")
        return submit_search(session, search, refs, backend, storage, inputs, progress, cached)
    return search.run(backend=backend, storage=storage, project=project, inputs=inputs, progress=progress)


class Search(Settings):
    """One tune() call: its checked settings, then (``run``) the backend, storage and study it
    opens, which the loop uses."""

    stop: Any = None  # an Event that cancels the search when set (a pipeline step's)

    def run(
        self,
        *,
        backend: Any,
        storage: Any,
        project: Project | None,
        inputs: Mapping[str, Any] | None,
        progress: Callable[[Progress], None] | None,
        parent: dict[str, Any] | None = None,
        stop: Any = None,
    ) -> TuneResult:
        """``parent``: the run record (recorded pending) to be the search's parent run, instead of
        a new one (a pipeline step's); ``stop``: an Event that cancels the search when set."""
        from shoal.runner import open_driver

        driver = open_driver(self.fn, backend, project)
        self.driver = driver
        self.project = driver.project
        try:
            driver.check(self.space.sample(), inputs)  # the handler takes these parameters
        except ParamError as exc:
            raise ParamError(f"the search space does not fit the handler: {exc}") from None
        self.ref = storages.resolve(storage, self.project)
        storages.refuse_remote(self.ref, driver.backend)
        self.storage = self.ref.open(heartbeat=True)
        self.heartbeat = compat.heartbeat_enabled(self.storage)
        self.study = open_study(self, self.storage, self.ref, self.project.name)
        driver.save_function()
        staged = driver.stage_inputs(inputs)
        Recovery(
            self.study,
            self.storage,
            self.project,
            self.objective,
            retries=self.fn.spec.retries,
            heartbeat=self.heartbeat,
        ).run()
        self.driver_key = f"{ATTR_DRIVER}{HOST}:{os.getpid()}"
        self.study.set_user_attr(self.driver_key, {**owner(), "active": True})
        for params in self.plan.queue:  # list strategy: fixed assignments, once each
            self.study.enqueue_trial(params, skip_if_exists=True)
        slots = max(1, driver.backend.slots)
        if self.parallelism is not None and self.parallelism > slots:
            fitted = driver.backend is not backend  # resolved by name: adapted to the replicas
            message = _parallelism_capped(self.parallelism, slots, self.fn, driver.backend, fitted)
            warnings.warn(message, ShoalWarning, stacklevel=4)
        parallelism = self.parallelism or slots
        self.stop = stop
        return Loop(self, staged, parallelism, progress, parent=parent).run()


def _parallelism_capped(asked: int, slots: int, fn: Function, backend: Any, fitted: bool) -> str:
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
