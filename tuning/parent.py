"""The parent run of a search: one record per tune() call, every trial's run its child.

It opens ``running`` with the search's settings as parameters and ends with the search's outcome
as results: how it stopped, the trials by state, and the best trial (or the Pareto front).
"""

from __future__ import annotations

import contextlib
import threading
from typing import TYPE_CHECKING, Any

from . import records

if TYPE_CHECKING:  # pragma: no cover
    from .driver import Search


class ParentRun:
    """The parent run's record, created at once (``uid``), finished by ``finish``."""

    def __init__(self, search: Search, staged: dict[str, Any], record: dict[str, Any] | None = None) -> None:
        """``record``: a run recorded pending to be the parent (a pipeline step's): it goes running
        with the search's settings, and ends carrying the best trial's results and artifacts."""
        self.search = search
        self.carry_best = record is not None
        params = {
            "study": search.study_name,
            "objective": search.objective.selectors(),
            "strategy": search.plan.name,
            "n_trials": search.n_trials,
            "space": search.space.describe(),
            "storage": search.ref.describe(),
        }
        labels = {"study": search.study_name, "kind": "tune"}
        if record is not None:
            search.project.store.update_run(
                record["uid"],
                state="running",
                started_at=records.now(),
                params=records.recordable({**record.get("params", {}), **params}),
                labels={**record.get("labels", {}), **labels},
            )
            self.uid: str = record["uid"]
            return
        record = search.driver.new_record(params, staged, labels=labels)
        record["state"] = "running"
        record["started_at"] = records.now()
        search.project.store.create_runs([record])
        self.uid = record["uid"]

    def finish(self, state: str, error: dict[str, Any] | None, counts: dict[str, Any], owner: dict[str, Any]) -> None:
        """End the record as ``state`` with ``counts`` (stopped, completed, pruned, failed) and the
        study's best, and mark this driver inactive on the study; returns once recorded."""
        from optuna.trial import TrialState

        search = self.search
        study = search.study
        finished = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
        results: dict[str, Any] = {**counts, "trials": len(study.get_trials(deepcopy=False, states=finished))}
        if study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if search.objective.multi:
                results["pareto"] = [
                    {"trial": t.number, "values": list(t.values), "params": t.params, "run": _run_of(t)}
                    for t in study.best_trials
                ]
            else:
                best = study.best_trial
                results.update(
                    best_value=best.value,
                    best_params=dict(best.params),
                    best_run=_run_of(best),
                    best_trial=best.number,
                )
        artifacts: list[dict[str, Any]] = []
        if self.carry_best and results.get("best_run"):
            results, artifacts = _with_best_outputs(search, results)
        fields = {"state": state, "results": records.recordable(results), "error": error, "ended_at": records.now()}
        done = threading.Event()
        search.driver.recorder.finished(self.uid, fields, artifacts, lambda problem: done.set())
        with contextlib.suppress(Exception):
            study.set_user_attr(search.driver_key, {**owner, "active": False})
        done.wait()


def _with_best_outputs(search: Search, results: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The parent's results with the best trial's own results added (the search's names win), and
    the best trial's artifacts (their records: the same files), as MLRun's parent run carries its
    best iteration's outputs, so the steps using the search get them by their keys."""
    from shoal.errors import NotFoundError

    search.project.flush()  # the best trial's run is recorded
    try:
        best = search.project.runs.get(results["best_run"])
    except NotFoundError:
        return results, []
    merged = {**best.results, **results}
    return merged, [artifact.to_record() for artifact in best.artifacts.values()]


def _run_of(trial: Any) -> str | None:
    return (trial.user_attrs.get("shoal") or {}).get("run")
