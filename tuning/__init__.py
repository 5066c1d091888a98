"""shoal.tuning: Optuna-driven hyperparameter searches whose trials are shoal runs.

``shoal.tune(fn, space, objective="max.accuracy", n_trials=50)`` runs an Optuna study on any backend,
as many trials in flight as the function's replicas allow, with the study in shared storage so a
killed driver resumes it. Modules: ``space`` (search spaces and the CLI's DSL), ``objective``
(selectors and stop targets), ``strategies`` (samplers, pruners), ``storage`` (where studies live),
``trial_scope`` and ``recorded_trial`` (the worker side), ``driver`` (``tune``: a search from start to
end, whose steps are ``options``, ``study``, ``recovery``, ``loop``, ``parent``), ``result`` (TuneResult),
``pipeline_step`` (a search as a step of a pipeline, when ``tune`` is called in a pipeline's body).
Optuna's private attributes are touched only in ``_optuna_compat``.
"""

from __future__ import annotations

from typing import Any

from shoal.errors import SearchFailedError

from .driver import Progress, tune
from .result import TuneResult
from .space import Categorical, Float, Int

__all__ = [
    "Categorical",
    "Float",
    "Int",
    "Progress",
    "SearchFailedError",
    "TuneResult",
    "delete_study",
    "load_study",
    "tune",
]


def load_study(name: str, project: Any = None, storage: Any = None) -> Any:
    """Open a study (an ``optuna.Study``) from the project's study storage or the given one, for
    inspection or for Optuna's own tools (optuna-dashboard)."""
    import optuna

    ref = _ref(project, storage)
    try:
        return optuna.load_study(study_name=name, storage=ref.open())
    except KeyError:
        raise _no_study(name, ref) from None


def delete_study(name: str, project: Any = None, storage: Any = None) -> int:
    """Delete a study and its trials from the study storage (to start it afresh, e.g. with another
    space); returns how many trials it had. The runs of its trials stay recorded."""
    import optuna

    ref = _ref(project, storage)
    try:
        trials = len(optuna.load_study(study_name=name, storage=ref.open()).get_trials(deepcopy=False))
        optuna.delete_study(study_name=name, storage=ref.open())
    except KeyError:  # no such study (or deleted meanwhile by someone else)
        raise _no_study(name, ref) from None
    return trials


def _ref(project: Any, storage: Any) -> Any:
    from shoal.project import Project, current_project

    from . import storage as storages

    if project is None:
        project = current_project()
    elif not isinstance(project, Project):
        from shoal.project import project as open_project

        project = open_project(project)
    return storages.resolve(storage, project)


def _no_study(name: str, ref: Any) -> Exception:
    import optuna

    from shoal.errors import NotFoundError

    names = sorted(s.study_name for s in optuna.get_all_study_summaries(ref.open(), include_best_trial=False))
    return NotFoundError(f"no study {name!r} in {ref.describe()}; studies there: {', '.join(names) or 'none'}")
