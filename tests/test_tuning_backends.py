"""Tuning on the session's real Dask and Ray backends: parallel trials on worker processes, pruning
and define-by-run through the study storage from the workers, and a missing objective failing the
run on the worker. Objectives take milliseconds.
"""

from __future__ import annotations

import optuna
import pytest

from shoal.errors import SearchFailedError
from shoal.tuning import Float

from helpers import functions_from

HANDLERS = '''
import os
import threading
import time


def quad(x: float):
    time.sleep(0.2)
    return {"score": -(x - 0.3) ** 2, "pid": os.getpid()}


def curve(ctx, x: float):
    for step in range(4):
        ctx.report(x * (step + 1), step)
    return {"score": x * 4}


def by_run(ctx):
    lr = ctx.trial.suggest_float("lr", 1e-3, 1.0, log=True)
    depth = ctx.trial.suggest_int("depth", 1, 3)
    return {"score": -abs(lr - 0.1) - depth}


def paced(x: float):
    time.sleep(0.05 if x < 0.5 else 2.0)
    return {"score": -(x - 0.3) ** 2}


def forgets(x: float):
    return {"acc": x}


def brief(x: float):
    time.sleep(0.003)
    ahead = any(t.name.startswith("shoal-trial-sampling") for t in threading.enumerate())
    return {"score": -(x - 0.3) ** 2, "ahead": ahead}
'''


@pytest.fixture(params=["dask", "ray"])
def engine(request):
    if request.param == "ray":
        pytest.importorskip("ray")
    return request.getfixturevalue(f"{request.param}_backend")


@pytest.fixture
def fn(project, tmp_path):
    return functions_from(tmp_path / "handlers.py", HANDLERS)


def test_parallel_trials_on_worker_processes(project, fn, engine):
    result = fn("quad").tune({"x": Float(0, 1)}, objective="max.score", n_trials=6, backend=engine, seed=0, project=project)
    assert [t["state"] for t in result.trials] == ["complete"] * 6
    runs = project.runs.list(parent=result.parent, limit=None)
    assert len(runs) == 6 and {r.backend for r in runs} == {engine.name}
    assert len({r.results["pid"] for r in runs}) == 2  # both worker processes ran trials
    spans = sorted((r.started_at, r.ended_at) for r in runs)
    assert any(a[1] > b[0] for a, b in zip(spans, spans[1:]))  # some trials overlapped
    assert result.best_run.results["score"] == result.best_value
    # Sampled on the workers: each run's record holds its trial's values.
    assert {r.uid: r.params["x"] for r in runs} == {t["run"]: t["params"]["x"] for t in result.trials}


def test_pruning_and_define_by_run_from_the_workers(project, fn, engine):
    study = optuna.create_study(study_name="curve", storage=_storage(project), direction="maximize")
    for x in (0.9, 0.8, 0.1):
        study.enqueue_trial({"x": x})
    # One trial at a time: 0.1 must report after 0.9 and 0.8 completed (the pruner's two startup
    # trials), which parallel trials do not guarantee; parallel trials are tested above.
    result = fn("curve").tune(
        {"x": Float(0, 1)}, objective="max.score", pruner="median", n_trials=3, parallelism=1, backend=engine, project=project
    )
    states = {t["params"]["x"]: t["state"] for t in result.trials}
    assert states[0.9] == states[0.8] == "complete" and states[0.1] == "pruned"
    by_run = fn("by_run").tune({}, objective="max.score", n_trials=6, backend=engine, project=project, seed=3)
    assert all(set(t["params"]) == {"lr", "depth"} for t in by_run.trials)
    assert all(t["state"] == "complete" for t in by_run.trials)
    # Each trial samples with its own seed (search seed and trial number): two workers starting
    # from one copied random state would suggest the same values.
    assert len({t["params"]["lr"] for t in by_run.trials}) == 6


def test_an_early_stop_gives_queued_trials_back_to_the_study(project, fn, engine):
    study = optuna.create_study(study_name="paced", storage=_storage(project), direction="maximize")
    for x in (0.1, 0.9, 0.9, 0.9):  # the first ends at once and stops the search; the others take 2 s
        study.enqueue_trial({"x": x})
    result = fn("paced").tune(
        {"x": Float(0, 1)}, objective="max.score", n_trials=10, stop_when="score>=-1", backend=engine, project=project
    )
    assert result.stopped == "stop_when"
    states = [t.state.name for t in result.study.get_trials(deepcopy=False)]
    assert states[0] == "COMPLETE" and "FAIL" not in states and "RUNNING" not in states
    assert "WAITING" in states  # queued behind the two running trials: given back, not failed
    dropped = [r for r in project.runs.list(parent=result.parent, limit=None) if r.state == "cancelled"]
    assert len(dropped) == states.count("WAITING")
    for run in dropped:  # the engine may start a queued trial before the stop reaches it: then it is
        # cancelled as it starts or while running; either way its trial goes back to the study
        assert run.error["type"] == "CancelledError" and run.error["message"].startswith("run was cancelled")
        assert run.started_at is not None or "before it started" in run.error["message"]
    # The next search on the study runs them first.
    again = fn("paced").tune({"x": Float(0, 1)}, objective="max.score", n_trials=4, backend=engine, project=project)
    errors = "\n".join(  # in full: a dict's repr would be cut short in the failure report
        f"{r.uid} {r.state}: {r.error}" for r in project.runs.list(parent=again.parent, limit=None) if not r.ok
    )
    assert [t.state.name for t in again.study.get_trials(deepcopy=False)] == ["COMPLETE"] * 4, errors


def test_short_trials_travel_in_batches_each_sampled_told_and_recorded(project, fn, engine):
    result = fn("brief").tune({"x": Float(0, 1)}, objective="max.score", n_trials=40, backend=engine, seed=2, project=project)
    assert [t["state"] for t in result.trials] == ["complete"] * 40
    runs = {r.uid: r for r in project.runs.list(parent=result.parent, limit=None)}
    assert len(runs) == 40 and {r.state for r in runs.values()} == {"completed"}
    for trial in result.study.get_trials(deepcopy=False):  # each its own values, in study and record
        run = runs[trial.user_attrs["shoal"]["run"]]
        assert run.params["x"] == trial.params["x"] and run.results["score"] == trial.value
    assert len({t["params"]["x"] for t in result.trials}) == 40
    # Batched: later trials of a batch were sampled on the worker while the one before them ran.
    assert any(run.results["ahead"] for run in runs.values())


def test_trials_are_asked_in_one_write_and_told_on_the_workers(project, fn, engine):
    """The driver creates each trial with its run link in one journal line (no separate user-attr
    write); every trial is told where it ran, so the driver itself writes no trial's end; a trial's
    parameters (whose append may be deferred, see TrialScope) are written before its end."""
    import json

    from shoal.tuning.storage import default_ref

    create_trial, set_trial_param, set_trial_state, set_trial_user_attr = 4, 5, 6, 8  # Optuna's journal op codes

    result = fn("brief").tune(
        {"x": Float(0, 1)}, objective="max.score", n_trials=40, backend=engine, seed=3, project=project
    )
    assert [t["state"] for t in result.trials] == ["complete"] * 40
    with open(default_ref(project).target) as journal:
        ops = [json.loads(line) for line in journal]
    created = [op for op in ops if op["op_code"] == create_trial]
    assert len(created) == 40 and all(op["user_attrs"]["shoal"]["run"] for op in created)
    assert not [op for op in ops if op["op_code"] == set_trial_user_attr and "shoal" in op["user_attr"]]
    driver = {op["worker_id"] for op in created}
    ended = [op for op in ops if op["op_code"] == set_trial_state and op["state"] != 0]
    assert len(ended) == 40 and not driver & {op["worker_id"] for op in ended}
    params = {op["trial_id"]: i for i, op in reversed(list(enumerate(ops))) if op["op_code"] == set_trial_param}
    ends = {op["trial_id"]: i for i, op in enumerate(ops) if op["op_code"] == set_trial_state and op["state"] != 0}
    assert len(params) == 40 and all(params[trial] < end for trial, end in ends.items())
    assert len([op for op in ops if op["op_code"] == set_trial_param]) == 40  # one value each, never two


def test_missing_objective_fails_on_the_worker(project, fn, engine):
    with pytest.raises(SearchFailedError, match="all 2 trials of study 'forgets' failed.*'accuracy'") as info:
        fn("forgets").tune({"x": Float(0, 1)}, objective="max.accuracy", n_trials=2, backend=engine, project=project)
    result = info.value.result
    assert [t["state"] for t in result.trials] == ["fail", "fail"]
    assert project.runs.get(result.parent).state == "failed"
    for run in project.runs.list(parent=result.parent, limit=None):
        assert run.state == "failed" and "'accuracy'" in run.error["message"] and "keys logged: acc" in run.error["message"]


def _storage(project):
    from shoal.tuning.storage import default_ref

    return default_ref(project).open()
