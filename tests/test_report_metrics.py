"""A tuning run keeps every reported value as its metric series ``objective``: through ``ctx.report``
and through Optuna's own ``trial.report`` on ``ctx.trial`` (as an objective written for Optuna
calls it), once each, equal to the trial's intermediate values in the study; and pruning decides
as plain Optuna does on the same values. Real Optuna, local backend (and the session's Dask).
"""

from __future__ import annotations

import optuna
import pytest

import shoal
from shoal.context import Context
from shoal.tuning import Float, TuneResult

from helpers import functions_from

HANDLERS = '''
import optuna


def through_ctx(ctx, x: float):
    for step in range(5):
        ctx.report(x * (step + 1), step)
    return {"score": x * 5}


def through_trial(ctx, x: float):
    trial = ctx.trial
    for step in range(5):
        trial.report(x * (step + 1), step)
        if trial.should_prune():
            raise optuna.TrialPruned()
    return {"score": x * 5, "is_optuna_trial": isinstance(trial, optuna.Trial)}


def mixed(ctx, x: float):
    ctx.report(x, 0)
    ctx.trial.report(x * 2, 1)
    ctx.report(x * 3)  # the next step: 2
    ctx.trial.report(99.0, 1)  # a step already reported: Optuna ignores it, and so does the record
    return {"score": x}


def optuna_form(trial):
    x = trial.suggest_float("x", 0, 1)
    for step in range(5):
        trial.report(x * (step + 1), step)
        if trial.should_prune():
            raise optuna.TrialPruned()
    return x * 5


def define_by_run(ctx):
    lr = ctx.trial.suggest_float("lr", 1e-3, 1.0, log=True)  # the trial is built here, on first use
    for step in range(3):
        ctx.trial.report(lr * step, step)
    return {"score": lr}
'''

XS = (0.9, 0.8, 0.7, 0.1, 0.85, 0.05)


@pytest.fixture
def fn(project, tmp_path):
    return functions_from(tmp_path / "handlers.py", HANDLERS)


def _storage(project):
    from shoal.tuning.storage import default_ref

    return default_ref(project).open()


def _enqueued(project, name: str, xs=XS) -> None:
    study = optuna.create_study(study_name=name, storage=_storage(project), direction="maximize")
    for x in xs:
        study.enqueue_trial({"x": x})


def _pruned(run: shoal.Run) -> bool:
    """A pruned trial's run: its own state, and no ``pruned`` marker among its results."""
    return run.state == "pruned" and "pruned" not in run.results


def _series_and_values(project, result: TuneResult) -> list[tuple[float, list, list]]:
    """Per trial: its x, its run's metric series, and the study's intermediate values as a series."""
    runs = {run.uid: run for run in project.runs.list(parent=result.parent, limit=None)}
    out = []
    for frozen in result.study.get_trials(deepcopy=False):
        run = runs[frozen.user_attrs["shoal"]["run"]]
        expected = [[step, value] for step, value in sorted(frozen.intermediate_values.items())]
        out.append((frozen.params.get("x"), run.metrics.get("objective"), expected))
    return out


@pytest.mark.parametrize("handler", ["through_ctx", "through_trial"])
def test_every_report_is_the_runs_metric_series_equal_to_the_studys_values(project, fn, handler):
    _enqueued(project, handler)
    result = fn(handler).tune(
        {"x": Float(0, 1)}, objective="max.score", pruner="median", n_trials=len(XS), parallelism=1, project=project
    )
    recorded = _series_and_values(project, result)
    assert len(recorded) == len(XS)
    for x, series, expected in recorded:
        assert series == expected, f"x={x}: run metrics {series} != intermediate values {expected}"
        assert series[0] == [0, x]  # each value once, from step 0
    assert any(len(series) < 5 for _, series, _ in recorded)  # pruned trials keep what they reported
    if handler == "through_trial":
        complete = [r for r in project.runs.list(parent=result.parent, limit=None) if not _pruned(r)]
        assert complete and all(r.results["is_optuna_trial"] is True for r in complete)


def test_an_optuna_objective_as_written_records_its_reports(project, fn):
    _enqueued(project, "optuna_form")
    result = shoal.tune(fn("optuna_form"), n_trials=len(XS), direction="maximize", pruner="median", parallelism=1,
                        project=project)
    recorded = _series_and_values(project, result)
    assert len(recorded) == len(XS)
    for x, series, expected in recorded:
        assert series == expected and series[0] == [0, x]
    assert any(len(series) < 5 for _, series, _ in recorded)


@pytest.mark.filterwarnings("ignore:The reported value is ignored")
def test_ctx_report_and_trial_report_mixed_are_recorded_once_each(project, fn):
    _enqueued(project, "mixed", (0.5,))
    result = fn("mixed").tune({"x": Float(0, 1)}, objective="max.score", n_trials=1, project=project)
    [(x, series, expected)] = _series_and_values(project, result)
    assert series == expected == [[0, 0.5], [1, 1.0], [2, 1.5]]


def test_pruning_decides_as_plain_optuna_does_on_the_same_values(project, fn):
    handlers: dict = {}
    exec(HANDLERS, handlers)  # the very objective shoal runs as "optuna_form", here for plain Optuna
    objective = handlers["optuna_form"]
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    plain = optuna.create_study(
        study_name="plain", storage=_storage(project), direction="maximize",
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0),  # shoal's "median"
    )
    for x in XS:
        plain.enqueue_trial({"x": x})
    plain.optimize(objective, n_trials=len(XS))
    decided = {t.params["x"]: (t.state.name, len(t.intermediate_values)) for t in plain.trials}
    assert {state for state, _ in decided.values()} == {"COMPLETE", "PRUNED"}  # the comparison means something
    for handler in ("through_ctx", "through_trial"):
        _enqueued(project, handler)
        result = fn(handler).tune(
            {"x": Float(0, 1)}, objective="max.score", pruner="median", n_trials=len(XS), parallelism=1, project=project
        )
        shoal_decided = {t.params["x"]: (t.state.name, len(t.intermediate_values)) for t in result.study.trials}
        assert shoal_decided == decided, handler
        pruned_runs = [r for r in project.runs.list(parent=result.parent, limit=None) if _pruned(r)]
        assert len(pruned_runs) == sum(state == "PRUNED" for state, _ in decided.values())


def test_a_trial_built_on_first_use_records_its_reports(project, fn):
    result = fn("define_by_run").tune({}, objective="max.score", n_trials=3, seed=1, project=project)
    recorded = _series_and_values(project, result)
    assert len(recorded) == 3
    for _, series, expected in recorded:
        assert len(series) == 3 and series == expected


def test_a_trial_sampled_ahead_records_its_reports(project, fn):
    from helpers import task

    from shoal.execution import execute
    from shoal.tuning.objective import Objective
    from shoal.tuning.space import Space
    from shoal.tuning.storage import default_ref
    from shoal.tuning.strategies import NamedSampler
    from shoal.tuning.trial_scope import TrialScope

    study = optuna.create_study(study_name="ahead", storage=_storage(project), direction="maximize")
    space = Space({"x": Float(0, 1)})
    trial = study.ask()
    scope = TrialScope(
        storage=default_ref(project), study_name="ahead", trial_id=trial._trial_id,
        objective=Objective.parse("max.score"), distributions=space.distributions(),
        sampler=NamedSampler("tpe", space, 5, False), tell=True,
    )
    scope.prepare()  # sampled on the sampling thread, before the run's context exists
    sampled, _ = scope._ahead.result(timeout=30)
    assert isinstance(sampled, optuna.Trial)
    outcome = execute(task(fn("through_trial"), {}, scope=scope, artifacts=project.artifacts_url))
    assert outcome.state == "completed" and outcome.results["is_optuna_trial"] is True
    frozen = study._storage.get_trial(trial._trial_id)
    assert outcome.metrics["objective"] == [[s, v] for s, v in sorted(frozen.intermediate_values.items())]
    assert len(outcome.metrics["objective"]) == 5


def test_reports_on_dask_workers_are_recorded(project, fn, dask_backend):
    _enqueued(project, "through_trial", XS[:3])
    result = fn("through_trial").tune(
        {"x": Float(0, 1)}, objective="max.score", pruner="median", n_trials=3, parallelism=1,
        backend=dask_backend, project=project,
    )
    recorded = _series_and_values(project, result)
    assert len(recorded) == 3
    for x, series, expected in recorded:
        assert series == expected and series[0] == [0, x]


def test_outside_tuning_ctx_report_only_records():
    ctx = Context(uid="u", function="f")
    ctx.report(1.5)
    ctx.report(float("nan"), 4)
    ctx.report(2)
    assert ctx.trial is None
    assert ctx.metrics == {"objective": [[0, 1.5], [4, "NaN"], [2, 2.0]]}
