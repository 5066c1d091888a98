"""``TuneResult``: the study after a search, with its best trial(s) as recorded shoal runs, and plots."""

from __future__ import annotations

import os
import pathlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shoal.errors import NotFoundError, TuningError

if TYPE_CHECKING:  # pragma: no cover
    from shoal.project import Project
    from shoal.runs import Run

PLOTS = {
    "history": "plot_optimization_history",
    "importance": "plot_param_importances",
    "parallel": "plot_parallel_coordinate",
}


def run_uid(trial: Any) -> str | None:
    """The uid of the shoal run that executed an Optuna trial (None for trials made elsewhere)."""
    return (trial.user_attrs.get("shoal") or {}).get("run")


def trial_dict(trial: Any) -> dict[str, Any]:
    return {
        "number": trial.number,
        "params": dict(trial.params),
        "values": list(trial.values) if trial.values is not None else None,
        "state": trial.state.name.lower(),
        "duration": trial.duration.total_seconds() if trial.duration is not None else None,
        "run": run_uid(trial),
        "error": trial.user_attrs.get("shoal_error"),
    }


@dataclass
class TuneResult:
    """The outcome of ``shoal.tune``: best parameters/value/run, every trial, the Optuna study.

    Optuna's ``Study`` names work here too: ``best_trial``, ``best_params``, ``best_value``,
    ``best_trials``, ``trials_dataframe()``, ``direction(s)``. ``trials`` differs: plain dicts
    with each trial's run uid (``study.trials`` has the ``FrozenTrial`` objects).

    ``stopped`` says why the search ended: n_trials, timeout, stop_when, max_failures or grid.
    """

    study: Any
    project: Project
    parent: str | None = None  # uid of the tuning parent run
    stopped: str = "n_trials"
    _runs: dict[str, Any] = field(default_factory=dict, repr=False)

    # -- trials ---------------------------------------------------------------------------------
    @property
    def multi_objective(self) -> bool:
        return len(self.study.directions) > 1

    @property
    def trials(self) -> list[dict[str, Any]]:
        """Every trial of the study: number, params, values, state, duration, run uid."""
        return [trial_dict(t) for t in self.study.get_trials(deepcopy=False)]

    def trials_frame(self):
        """The trials as a pandas DataFrame (one row per trial)."""
        try:
            import pandas as pd
        except ImportError:
            raise TuningError("trials_frame() needs pandas: pip install pandas") from None
        rows = []
        for item in self.trials:
            row = {k: v for k, v in item.items() if k not in ("params", "values")}
            values = item["values"] or []
            if self.multi_objective:
                row.update({f"value_{i}": v for i, v in enumerate(values)})
            else:
                row["value"] = values[0] if values else None
            row.update({f"params_{k}": v for k, v in item["params"].items()})
            rows.append(row)
        return pd.DataFrame(rows)

    def trials_dataframe(self, *args: Any, **kwargs: Any):
        """Optuna's ``study.trials_dataframe(...)``, the same frame (its ``attrs``/``multi_index``
        options too): one row per trial with ``value``/``values_i``, ``params_*``, ``user_attrs_*``."""
        return self.study.trials_dataframe(*args, **kwargs)

    @property
    def direction(self) -> Any:
        """Optuna's ``study.direction`` (a ``StudyDirection``; one objective only)."""
        return self.study.direction

    @property
    def directions(self) -> list[Any]:
        """Optuna's ``study.directions``."""
        return self.study.directions

    def _completed(self) -> list[Any]:
        from optuna.trial import TrialState

        return self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))

    @property
    def best_trial(self) -> Any | None:
        """Optuna's ``study.best_trial`` (a ``FrozenTrial``: ``params``, ``value``, ``user_attrs``,
        ``intermediate_values``), or None before any trial completed."""
        if self.multi_objective:
            raise TuningError("a multi-objective study has no single best trial; use best_trials (the Pareto front)")
        return self.study.best_trial if self._completed() else None

    @property
    def best_trials(self) -> list[Any]:
        """The Pareto front (multi-objective), or the best trial in a list."""
        if not self._completed():
            return []
        return list(self.study.best_trials) if self.multi_objective else [self.study.best_trial]

    @property
    def best_params(self) -> dict[str, Any] | None:
        trial = self.best_trial
        return dict(trial.params) if trial is not None else None

    @property
    def best_value(self) -> float | None:
        trial = self.best_trial
        return trial.value if trial is not None else None

    @property
    def best_run(self) -> Run | None:
        trial = self.best_trial
        return self.run(trial) if trial is not None else None

    def run(self, trial: Any) -> Run | None:
        """The recorded shoal run of a trial (or trial number)."""
        if isinstance(trial, int):
            trial = self.study.trials[trial]
        uid = run_uid(trial)
        if uid is None:
            return None
        if uid not in self._runs:
            try:
                self._runs[uid] = self.project.runs.get(uid)
            except NotFoundError:
                return None
        return self._runs[uid]

    # -- plots ----------------------------------------------------------------------------------
    def plot(self, kind: str = "history", path: str | os.PathLike | None = None) -> pathlib.Path:
        """Write an Optuna plot: ``history``, ``importance`` or ``parallel``; ``.html`` (plotly)
        or ``.png``/``.svg``/``.pdf`` (matplotlib) by the path's extension (default: HTML)."""
        return write_plot(self.study, kind, path)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "study": self.study.study_name,
            "directions": [d.name.lower() for d in self.study.directions],
            "parent": self.parent,
            "stopped": self.stopped,
            "trials": self.trials,
        }
        if self.multi_objective:
            out["best_trials"] = [trial_dict(t) for t in self.best_trials]
        else:
            best = self.best_trial
            out.update(
                best_value=best.value if best else None,
                best_params=dict(best.params) if best else None,
                best_run=run_uid(best) if best else None,
                best_trial=best.number if best else None,
            )
        return out

    def __repr__(self) -> str:
        if self.multi_objective:
            return (
                f"<TuneResult {self.study.study_name} pareto={len(self.best_trials)} trials={len(self.study.trials)}>"
            )
        return f"<TuneResult {self.study.study_name} best_value={self.best_value!r} best_params={self.best_params!r}>"


def write_plot(study: Any, kind: str, path: str | os.PathLike | None) -> pathlib.Path:
    if kind not in PLOTS:
        raise TuningError(f"unknown plot kind {kind!r}; use one of {', '.join(PLOTS)}")
    target = pathlib.Path(path if path is not None else f"{study.study_name}-{kind}.html")
    suffix = target.suffix.lower()
    if suffix not in (".html", ".htm", ".png", ".svg", ".pdf", ".jpg", ".jpeg"):
        raise TuningError(f"plot path {str(target)!r} must end in .html (interactive) or .png/.svg/.pdf (static)")
    from optuna.trial import TrialState

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise TuningError(f"study {study.study_name!r} has no completed trial to plot yet")
    if kind == "importance" and len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) < 2:
        raise TuningError("parameter importances need at least two completed trials")
    target.parent.mkdir(parents=True, exist_ok=True)
    options = {"target_name": "objective"} if len(study.directions) == 1 else {}
    multi = len(study.directions) > 1
    if suffix in (".html", ".htm"):
        try:
            import plotly  # noqa: F401
        except ImportError:
            raise TuningError(
                "HTML plots need plotly: pip install plotly (or 'shoal[tuning]'); or write a .png"
            ) from None
        import optuna.visualization as vis

        figure = _figure(vis, kind, study, multi, options)
        figure.write_html(str(target), include_plotlyjs=True)
        return target
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        raise TuningError("static plots need matplotlib: pip install matplotlib; or write a .html") from None
    import warnings

    import optuna
    import optuna.visualization.matplotlib as static_vis

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        axes = _figure(static_vis, kind, study, multi, options)
    figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
    figure.tight_layout()
    figure.savefig(str(target))
    plt.close(figure)
    return target


def _figure(vis: Any, kind: str, study: Any, multi: bool, options: dict) -> Any:
    function = getattr(vis, PLOTS[kind])
    if multi:  # one plot per objective would need a target; show the first objective
        return function(study, target=lambda t: t.values[0], target_name="objective 0")
    return function(study, **options)
