"""Optuna objectives as Optuna users write them, run by shoal with one call replacing ``study.optimize``.

The objectives below follow the shape of optuna-examples' ``sklearn/sklearn_simple.py`` (iris, SVC or
random forest, ``cross_val_score``), ``basic/pruning.py`` (an ``SGDClassifier`` trained step by step
with ``trial.report`` / ``trial.should_prune`` / ``raise optuna.TrialPruned()``) and the quadratic
examples (``set_user_attr``, ``directions``), at small sizes. Each lives in a file of its own, as in
the examples, and is imported and passed to ``shoal.tune`` as it is, on local, Dask and Ray.
(``cross_val_score`` runs with ``n_jobs=1`` here: ``n_jobs=-1`` works on every engine too, but its
loky worker processes would outlive the test.)
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import uuid

import optuna
import pytest

import shoal
from shoal.errors import TuningError

SKLEARN_SIMPLE = '''
import optuna

import sklearn.datasets
import sklearn.ensemble
import sklearn.model_selection
import sklearn.svm


def objective(trial):
    iris = sklearn.datasets.load_iris()
    features, target = iris.data, iris.target

    kind = trial.suggest_categorical("classifier", ["SVC", "RandomForest"])
    if kind == "SVC":
        c = trial.suggest_float("svc_c", 1e-10, 1e10, log=True)
        model = sklearn.svm.SVC(C=c, gamma="auto")
    else:
        depth = trial.suggest_int("rf_max_depth", 2, 32, log=True)
        model = sklearn.ensemble.RandomForestClassifier(max_depth=depth, n_estimators=5)

    scores = sklearn.model_selection.cross_val_score(model, features, target, n_jobs=1, cv=3)
    return scores.mean()
'''

PRUNING = '''
import optuna

import sklearn.datasets
import sklearn.linear_model
import sklearn.model_selection


def objective(trial):
    iris = sklearn.datasets.load_iris()
    classes = list(set(iris.target))
    train_x, valid_x, train_y, valid_y = sklearn.model_selection.train_test_split(
        iris.data, iris.target, test_size=0.25
    )

    alpha = trial.suggest_float("alpha", 1e-5, 1e-1, log=True)
    model = sklearn.linear_model.SGDClassifier(alpha=alpha)

    for step in range(12):
        model.partial_fit(train_x, train_y, classes=classes)
        accuracy = model.score(valid_x, valid_y)
        trial.report(accuracy, step)
        if trial.should_prune():
            raise optuna.TrialPruned()

    return model.score(valid_x, valid_y)
'''

QUADRATIC = '''
import optuna


def objective(trial: optuna.Trial):
    x = trial.suggest_float("x", -10, 10)
    y = trial.suggest_categorical("y", [-1, 0, 1])
    trial.set_user_attr("sum", x + y)
    return x**2 + y


def both(trial):
    x = trial.suggest_float("x", -10, 10)
    return x**2, -((x - 2) ** 2)
'''


def load(tmp_path, name: str, source: str):
    """Import a user's file as Python does (a module of its own), without touching sys.path."""
    path = tmp_path / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"{name}_{uuid.uuid4().hex[:8]}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_recorded(project, result) -> dict[int, shoal.Run]:
    """Every trial is a recorded run with the trial's parameters, and its value when it completed."""
    runs = {}
    for trial in result.study.get_trials(deepcopy=False):
        run = result.run(trial)
        assert run is not None and run.parent == result.parent
        assert run.params == trial.params  # define-by-run suggestions land in the record
        if trial.state == optuna.trial.TrialState.COMPLETE:
            assert run.state == "completed" and run.results["value"] == pytest.approx(trial.value)
        runs[trial.number] = run
    assert len(project.runs.list(parent=result.parent, limit=None)) == len(runs)
    return runs


def check_best(result) -> None:
    study = result.study
    assert result.best_params == study.best_params
    assert result.best_value == study.best_value
    assert result.best_trial.number == study.best_trial.number and result.best_trial.params == study.best_params
    assert result.best_run.results["value"] == pytest.approx(study.best_value)
    assert result.trials_dataframe().equals(study.trials_dataframe())


def test_sklearn_simple(project, tmp_path, engine):
    example = load(tmp_path, "sklearn_simple", SKLEARN_SIMPLE)

    result = shoal.tune(example.objective, n_trials=6, direction="maximize", backend=engine, project=project)

    assert result.study.direction == optuna.study.StudyDirection.MAXIMIZE
    assert [t.state.name for t in result.study.trials] == ["COMPLETE"] * 6
    check_recorded(project, result)
    check_best(result)
    assert all(0 < t.value <= 1 for t in result.study.trials)
    # Re-run the best with fixed values, as Optuna users do with optuna.trial.FixedTrial.
    fn = shoal.function(example.objective)
    again = fn.run(params=result.best_params, backend=engine, project=project)
    assert again.state == "completed" and again.params == result.best_params
    assert 0 < again.results["value"] <= 1


def test_pruning(project, tmp_path, engine):
    example = load(tmp_path, "pruning", PRUNING)

    # No pruner given: Optuna's default, MedianPruner, prunes as it does under study.optimize.
    result = shoal.tune(example.objective, n_trials=16, direction="maximize", backend=engine, project=project)

    pruned = result.study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.PRUNED])
    complete = result.study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.COMPLETE])
    assert len(pruned) + len(complete) == 16 and pruned and len(complete) >= 5
    runs = check_recorded(project, result)
    check_best(result)
    for trial in pruned:
        run = runs[trial.number]
        assert run.state == "pruned" and "value" not in run.results
        # its reports up to the step it was pruned at (the last one included) are the run's series
        reported = {int(step): value for step, value in run.metrics["objective"]}
        assert reported == pytest.approx(trial.intermediate_values) and len(reported) <= 12
    fixed = shoal.function(example.objective).run(params={"alpha": 1e-3}, backend=engine, project=project)
    assert fixed.state == "completed" and 0 <= fixed.results["value"] <= 1


def test_user_attrs_default_direction_and_several_objectives(project, tmp_path, engine):
    example = load(tmp_path, "quadratic", QUADRATIC)
    fn = shoal.function(example.objective)

    result = fn.tune(n_trials=8, backend=engine, project=project)  # Optuna's default: minimize

    assert result.study.direction == optuna.study.StudyDirection.MINIMIZE
    assert result.best_value == min(t.value for t in result.study.trials)
    attrs = result.best_trial.user_attrs
    assert attrs["sum"] == pytest.approx(result.best_params["x"] + result.best_params["y"])
    check_recorded(project, result)

    pareto = shoal.tune(example.both, directions=["minimize", "maximize"], n_trials=6, backend=engine, project=project)
    assert [d.name for d in pareto.study.directions] == ["MINIMIZE", "MAXIMIZE"]
    assert pareto.best_trials and {t.number for t in pareto.best_trials} == {t.number for t in pareto.study.best_trials}
    for trial in pareto.study.trials:
        run = pareto.run(trial)
        assert run.results["values"] == pytest.approx(list(trial.values)) and run.params == trial.params


def test_an_objective_run_outside_a_search(project, tmp_path):
    example = load(tmp_path, "quadratic", QUADRATIC)
    fn = shoal.function(example.objective)

    run = fn.run(params={"x": 3.0, "y": -1}, project=project)
    assert run.state == "completed" and run.results == {"value": 8.0} and run.params == {"x": 3.0, "y": -1}

    alone = fn.run(project=project)
    assert alone.state == "failed"
    assert "shoal.tune(objective" in alone.error["message"] and "params=" in alone.error["message"]


def test_pruning_can_be_switched_off(project, tmp_path):
    example = load(tmp_path, "pruning", PRUNING)
    for study, pruner in (("by-name", "none"), ("by-object", optuna.pruners.NopPruner())):
        fn = shoal.function(example.objective)
        result = shoal.tune(fn, n_trials=8, direction="maximize", pruner=pruner, study=study, project=project)
        assert [t.state.name for t in result.study.trials] == ["COMPLETE"] * 8
        assert all(len(t.intermediate_values) == 12 for t in result.study.trials)


@pytest.mark.parametrize(
    "options, fragment",
    [
        ({"direction": "maximize", "directions": ["minimize"]}, "not both"),
        ({"direction": "maximize", "objective": "max.accuracy"}, "drop direction="),
        ({"directions": "maximize"}, "directions must be a list"),
        ({"direction": "up"}, "neither 'minimize' nor 'maximize'"),
        ({"directions": []}, "directions is empty"),
    ],
)
def test_contradictory_options_are_refused_before_anything_runs(project, tmp_path, options, fragment):
    example = load(tmp_path, "quadratic", QUADRATIC)
    with pytest.raises(TuningError, match=fragment):
        shoal.tune(example.objective, n_trials=2, project=project, **options)
    assert project.runs.list(limit=None) == []


def test_a_tuple_for_one_direction_fails_the_trial_naming_the_fix(project, tmp_path):
    example = load(tmp_path, "quadratic", QUADRATIC)
    with pytest.raises(shoal.errors.SearchFailedError, match="returned 2 value"):
        shoal.tune(example.both, n_trials=1, project=project)


def test_a_shoal_handler_with_direction_optimises_its_returned_value(project, tmp_path):
    module = load(tmp_path, "plain", "def square(x: float):\n    return (x - 2) ** 2\n")
    result = shoal.tune(module.square, {"x": shoal.tuning.Float(-10, 10)}, direction="minimize", n_trials=5, project=project)
    assert result.best_run.results["return"] == result.best_value
    assert math.isclose(result.best_value, (result.best_params["x"] - 2) ** 2)


def test_the_command_line_runs_an_optuna_objective(tmp_path):
    (tmp_path / "quadratic.py").write_text(QUADRATIC)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")}
    done = subprocess.run(
        [sys.executable, "-m", "shoal.cli.main", "tune", "quadratic.py:both", "--direction", "minimize",
         "--direction", "maximize", "--trials", "3", "--json"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["directions"] == ["minimize", "maximize"] and len(data["trials"]) == 3
    assert all(t["state"] == "complete" and len(t["values"]) == 2 for t in data["trials"])


def test_which_first_parameters_take_the_trial():
    from shoal.params import signature_of

    def named(trial, scale: float = 1.0): ...
    def typed(t: optuna.Trial): ...
    def typed_as_text(t: "optuna.trial.Trial"): ...
    def a_number(trial: int): ...
    def context(ctx, trial): ...

    assert [signature_of(f).trial_param for f in (named, typed, typed_as_text, a_number, context)] == [
        "trial", "t", "t", None, None
    ]
    assert signature_of(named).names == ("scale",) and signature_of(a_number).names == ("trial",)
