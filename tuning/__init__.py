"""shoal.tuning: Optuna-driven hyperparameter searches whose trials are shoal runs.

``shoal.tune(fn, space, objective="max.accuracy", n_trials=50)`` runs an Optuna study on any backend,
as many trials in flight as the function's replicas allow, with the study in shared storage so a
killed driver resumes it. Modules: ``space`` (search spaces and the CLI's DSL), ``objective``
(selectors and stop targets), ``strategies`` (samplers, pruners), ``storage`` (where studies live),
``trial_scope`` (the worker side), ``driver`` (the ask/tell loop), ``result`` (TuneResult).
"""

from __future__ import annotations

from typing import Any

from .driver import Progress, tune
from .result import TuneResult
from .space import Categorical, Float, Int

__all__ = ["Categorical", "Float", "Int", "Progress", "TuneResult", "load_study", "tune"]


def load_study(name: str, project: Any = None, storage: Any = None) -> Any:
    """Open a study (an ``optuna.Study``) from the project's study storage or the given one, for
    inspection or for Optuna's own tools (optuna-dashboard)."""
    import optuna

    from shoal.errors import NotFoundError
    from shoal.project import Project, current_project

    from . import storage as storages

    if project is None:
        project = current_project()
    elif not isinstance(project, Project):
        from shoal.project import project as open_project

        project = open_project(project)
    ref = storages.resolve(storage, project)
    try:
        return optuna.load_study(study_name=name, storage=ref.open())
    except KeyError:
        names = sorted(s.study_name for s in optuna.get_all_study_summaries(ref.open(), include_best_trial=False))
        raise NotFoundError(
            f"no study {name!r} in {ref.describe()}; studies there: {', '.join(names) or 'none'}"
        ) from None
