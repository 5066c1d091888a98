"""``shoal.tune`` inside a pipeline's body: the search is a step (see ``shoal.pipelines.driver_steps``).

It returns a ``SearchHandle`` at once. Its run is the search's parent run, a child of the pipeline
run; its trials are that run's children. It starts once the steps it uses are done: a space constant
or an input may be another step's output (``space={"lr": Float(...), "rows": prep.output("n")}``,
``inputs={"dataset": prep.output("dataset")}``). Its outputs are the search's (``best_params``,
``best_value``, ...) and the best trial's own results and artifacts by their keys, as MLRun's
hyper-parameter run hands its best iteration's outputs to the next step of a workflow.

It is cached like any step: the key covers the objective function's hash, the space (Optuna's JSON
of each distribution, and the constants), the search's options, the inputs' contents and the
``cache_version``. Its study is named after that key (``train-<key[:12]>``) unless ``study=`` names
one, so a pipeline rerun after its driver was killed resumes the same study; a step that reruns
with ``refresh=True`` or caching off starts a study of its own (named after its run).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from shoal.errors import ParamError, SearchFailedError

from .loop import SearchCancelled

if TYPE_CHECKING:  # pragma: no cover
    from shoal.pipelines.driver_steps import DriverStepCall
    from shoal.pipelines.handles import StepHandle
    from shoal.pipelines.session import PipelineRun
    from shoal.runs import Run

    from .driver import Search
    from .progress import Progress

#: The key parameter holding the search's settings (not an identifier: no handler parameter has it).
SETTINGS = "shoal.search"


def search_space(space: Any) -> tuple[Any, dict[str, Any]]:
    """The space without its entries that hold references to other steps' outputs, and those
    entries (constants whose values come once their producers are done)."""
    from shoal.pipelines.references import find_refs

    if not isinstance(space, Mapping):
        return space, {}  # Space() says what is wrong with it
    refs = {name: value for name, value in space.items() if find_refs(value)}
    return {name: value for name, value in space.items() if name not in refs}, refs


def submit_search(
    session: PipelineRun,
    search: Search,
    refs: dict[str, Any],
    backend: Any,
    storage: Any,
    inputs: Mapping[str, Any] | None,
    progress: Callable[[Progress], None] | None,
    cache: tuple[Any, ...],
) -> StepHandle:
    """Make ``search`` a step of the pipeline run ``session``; returns its handle at once."""
    from shoal.pipelines.handles import SearchHandle

    named_study = search.study_name if search.study_name != search.fn.name else None
    settings = {
        "space": search.space.signature(),
        "constants": dict(search.space.constants),
        "objective": search.objective.selectors(),
        "n_trials": search.n_trials,
        "timeout": search.timeout,
        "strategy": search.strategy,  # an Optuna sampler object has no stable form: uncacheable
        "pruner": search.pruner_option,  # an Optuna pruner object: uncacheable too
        "seed": search.seed,
        "stop_when": repr(search.stop_when) if search.stop_when is not None else None,
        "max_failures": search.max_failures,
        "study": named_study,
    }
    record_params = {
        "objective": search.objective.selectors(),
        "strategy": search.plan.name,
        "n_trials": search.n_trials,
        "space": {**search.space.describe(), **refs},
    }

    def work(call: DriverStepCall) -> Run:
        return _run_search(search, call, refs, named_study, storage, progress)

    try:
        return session.submit_on_driver(
            search.fn,
            work,
            kind="tune",
            params={SETTINGS: settings, **refs},
            record_params=record_params,
            inputs=inputs,
            backend=backend,
            cache=cache,
            labels={"kind": "tune"},
            handle_type=SearchHandle,
            check=search.space.sample(),
        )
    except ParamError as exc:
        raise ParamError(f"the search space does not fit the handler: {exc}") from None


def _run_search(
    search: Search,
    call: DriverStepCall,
    refs: dict[str, Any],
    named_study: str | None,
    storage: Any,
    progress: Callable[[Progress], None] | None,
) -> Run:
    """The step's work, once its producers are done: the search, its run the step's run."""
    from shoal.runs import Run

    # Resolved references: space constants, and results given as inputs (values for every trial).
    search.space.constants.update({k: v for k, v in call.params.items() if k != SETTINGS})
    if named_study is None:
        named_by: str = call.record["uid"] if call.key is None or call.refresh else call.key
        search.study_name = f"{search.fn.name}-{named_by[:12]}"
    try:
        search.run(
            backend=call.backend,
            storage=storage,
            project=call.project,
            inputs=call.inputs,
            progress=progress,
            parent=call.record,
            stop=call.stop,
        )
    except (SearchFailedError, SearchCancelled):
        pass  # the parent run (the step's) is recorded failed or cancelled
    call.project.flush()
    return Run.from_record(call.project.store.get_run(call.record["uid"]))
