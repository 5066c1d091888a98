"""The ``pruned`` run state (issue 13): a trial its search stopped early is recorded ``pruned``, not
``completed`` with ``results={"pruned": true}``; it is a normal end (never retried, no error), the CLI
and ``project.runs.list`` filter on it, and migration 0005 turns old records into it on SQLite and
PostgreSQL and back. Real Optuna, real databases, the CLI in subprocesses; no mocks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import datetime, timezone

import optuna
import pytest
import sqlalchemy as sa

import shoal
from shoal.runs import FINAL_STATES, STATES, RunState
from shoal.store import Store, migrate, open_engine
from shoal.store.schema import runs as runs_table
from shoal.tuning import Float

from conftest import PG_ADMIN_URL, _PG_REASON

from helpers import functions_from

HANDLERS = '''
import pathlib

import optuna


def curve(ctx, x: float):
    """A learning curve: low x values report below the median of the earlier trials and are pruned."""
    for step in range(5):
        ctx.report(x * (step + 1), step)
    ctx.log_result("score", x * 5)


def gives_up(ctx, marker: str):
    """Pruned outside a search; counts its attempts in ``marker``."""
    path = pathlib.Path(marker)
    path.write_text(str(int(path.read_text() or 0) + 1) if path.exists() else "1")
    ctx.log_result("partial", 0.25)
    raise optuna.TrialPruned("not worth finishing")


def pruned_or_done(x: int):
    if x % 2:
        raise optuna.TrialPruned()
    return {"x": x}


def fine():
    return {"ok": 1}


def score(x: float):
    return {"score": -x}
'''


@pytest.fixture
def fn(tmp_path):
    return functions_from(tmp_path / "handlers.py", HANDLERS)


# -- the state ---------------------------------------------------------------------------------------
def test_pruned_is_a_finished_state_that_ends_well():
    assert "pruned" in STATES and "pruned" in FINAL_STATES
    assert RunState("pruned") is RunState.PRUNED
    assert RunState.PRUNED.finished and RunState.PRUNED.ok
    assert not RunState.FAILED.ok and not RunState.RUNNING.finished


def test_a_pruned_run_is_recorded_pruned_never_retried_and_raises_nothing(project, fn, tmp_path):
    marker = tmp_path / "attempts"
    run = fn("gives_up", retries=2).run({"marker": str(marker)}, project=project, watch=False)
    assert run.state == "pruned" and run.ok and run.error is None
    assert run.raise_for_state() is run  # a normal end, as in Optuna
    assert run.attempts == 1 and marker.read_text() == "1"  # retries=2, yet it ran once
    assert run.results == {"partial": 0.25}  # what it logged stays; no "pruned" marker
    stored = project.runs.get(run.uid)
    assert (stored.state, stored.results) == ("pruned", {"partial": 0.25})


def test_a_map_with_pruned_runs_completes_and_counts_them(project, fn):
    runs = fn("pruned_or_done").map([{"x": i} for i in range(4)], project=project, watch=False)
    assert [r.state for r in runs] == ["completed", "pruned", "completed", "pruned"]
    parent = project.runs.get(runs[0].parent)
    assert parent.state == "completed" and parent.error is None
    assert parent.results["completed"] == 2 and parent.results["pruned"] == 2


# -- tuning ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("engine", ["local", "dask"])
def test_a_search_records_its_pruned_trials_as_pruned_runs(project, fn, engine, request):
    from shoal.tuning.storage import default_ref

    backend = request.getfixturevalue("dask_backend") if engine == "dask" else "local"
    study = optuna.create_study(study_name="curve", storage=default_ref(project).open(), direction="maximize")
    for x in (0.9, 0.8, 0.1, 0.05):
        study.enqueue_trial({"x": x})
    # One trial at a time: the low values must report after 0.9 and 0.8 completed (the median
    # pruner's startup trials).
    result = fn("curve").tune(
        {"x": Float(0, 1)}, objective="max.score", pruner="median", n_trials=4, parallelism=1,
        backend=backend, project=project,
    )
    by_x = {t["params"]["x"]: t for t in result.trials}
    assert [by_x[x]["state"] for x in (0.9, 0.8, 0.1, 0.05)] == ["complete", "complete", "pruned", "pruned"]
    pruned = project.runs.list(parent=result.parent, state="pruned", limit=None)
    assert {r.uid for r in pruned} == {by_x[0.1]["run"], by_x[0.05]["run"]}
    for run in pruned:
        assert "pruned" not in run.results and run.error is None
        assert 0 < len(run.metrics["objective"]) < 5  # its reports are kept; it stopped early
    done = project.runs.list(parent=result.parent, state="completed", limit=None)
    assert {r.uid for r in done} == {by_x[0.9]["run"], by_x[0.8]["run"]}
    parent = project.runs.get(result.parent)
    assert parent.state == "completed" and parent.results["pruned"] == 2 and parent.results["completed"] == 2


def test_a_resume_records_a_trial_a_dead_driver_left_pruned_as_pruned(project, fn):
    """A worker told its trial pruned, then the driver died before recording the run (set up as a
    SIGKILL leaves it); the next search finishes that run ``pruned`` from the study. A trial whose
    run was recorded pruned but never told is told pruned."""
    from helpers import dead_search_driver
    from optuna.trial import TrialState

    from shoal.tuning import load_study

    handler, space = fn("score"), {"x": Float(0, 1)}
    handler.tune(space, objective="max.score", n_trials=1, project=project)
    study = load_study("score", project=project)
    owner, driver, parent = dead_search_driver(study, handler, project)
    trial = study.ask()
    trial.suggest_float("x", 0, 1)
    record = {
        **driver.new_record({}, {}, parent=parent["uid"], iteration=trial.number),
        "state": "running", "started_at": datetime.now().astimezone(),
    }
    study._storage.set_trial_user_attr(trial._trial_id, "shoal", {"run": record["uid"], "parent": parent["uid"], "driver": owner})
    study.tell(trial, state=TrialState.PRUNED)
    # And one whose run was recorded pruned, but the driver died before telling its trial.
    untold = study.ask()
    untold.suggest_float("x", 0, 1)
    finished = {
        **driver.new_record({}, {}, parent=parent["uid"], iteration=untold.number), "state": "pruned",
        "started_at": datetime.now().astimezone(), "ended_at": datetime.now().astimezone(),
    }
    study._storage.set_trial_user_attr(untold._trial_id, "shoal", {"run": finished["uid"], "parent": parent["uid"], "driver": owner})
    project.store.create_runs([parent, record, finished])

    result = handler.tune(space, objective="max.score", n_trials=4, project=project)
    run = project.runs.get(record["uid"])
    assert run.state == "pruned" and run.results == {} and run.params["x"] == trial.params["x"]
    assert "restored from the study" in run.logs
    states = {t.number: t.state for t in result.study.get_trials(deepcopy=False)}
    assert states[trial.number] == states[untold.number] == TrialState.PRUNED
    assert project.runs.get(finished["uid"]).state == "pruned"


# -- the command line --------------------------------------------------------------------------------
def _cli(folder, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")}
    return subprocess.run(
        [sys.executable, "-m", "shoal.cli.main", *args], cwd=folder, env={**env, "COLUMNS": "200"},
        capture_output=True, text=True, timeout=120,
    )


def test_runs_list_state_pruned_through_the_cli(tmp_path, fn):
    project = shoal.Project(tmp_path)
    try:
        pruned = fn("gives_up").run({"marker": str(tmp_path / "m")}, project=project, watch=False)
        completed = fn("fine").run(project=project, watch=False)
    finally:
        project.close()
    assert (pruned.state, completed.state) == ("pruned", "completed")

    listed = _cli(tmp_path, "runs", "list", "--state", "pruned", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [(r["uid"], r["state"]) for r in json.loads(listed.stdout)] == [(pruned.uid, "pruned")]
    table = _cli(tmp_path, "runs", "list", "--state", "pruned")
    assert table.returncode == 0 and pruned.uid[:12] in table.stdout and completed.uid[:12] not in table.stdout
    wrong = _cli(tmp_path, "runs", "list", "--state", "prunned")
    assert wrong.returncode == 2 and "pruned" in wrong.stderr  # the message lists the states
    # ``shoal run`` of a handler that is pruned: a normal end, exit 0
    ran = _cli(tmp_path, "run", "handlers.py:gives_up", "--param", f"marker={tmp_path / 'm2'}", "--json")
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["state"] == "pruned"


# -- migration 0005 ----------------------------------------------------------------------------------
@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """A fresh, empty database of each kind (PostgreSQL: a throwaway database, dropped after)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/old/shoal.db"
        return
    if _PG_REASON is not None:
        pytest.skip(_PG_REASON)
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"shoal_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield sa.make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


# What revision 0004 wrote, and what 0005 must make of it.
OLD_ROWS = {
    "trial": ("completed", {"score": 0.5, "pruned": True, "z": 1}),  # a pruned trial with more results
    "bare": ("completed", {"pruned": True}),  # a pruned trial that logged nothing else
    "search": ("completed", {"completed": 3, "pruned": 1, "failed": 0}),  # a parent's count: untouched
    "quoted": ("completed", {"pruned": "true"}),  # a string, not the marker: untouched
    "failed": ("failed", {"pruned": True}),  # never a completed run: untouched
    "plain": ("completed", {"b": 2, "a": 1}),
}
UPGRADED = {
    "trial": ("pruned", {"score": 0.5, "z": 1}),
    "bare": ("pruned", {}),
    **{key: OLD_ROWS[key] for key in ("search", "quoted", "failed", "plain")},
}


def _rows(engine) -> dict[str, tuple[str, dict]]:
    with engine.connect() as connection:
        found = connection.execute(sa.select(runs_table.c.uid, runs_table.c.state, runs_table.c.results)).all()
    return {uid: (state, results) for uid, state, results in found}


def test_migration_0005_turns_pruned_results_into_the_pruned_state_and_back(db_url):
    engine = open_engine(db_url)
    try:
        migrate.upgrade(engine, "0004_run_drivers")
        now = datetime.now(timezone.utc)
        rows = [
            {
                "uid": uid, "project": "old", "function": "f", "function_hash": "0" * 64, "state": state,
                "params": {}, "inputs": {}, "results": results, "metrics": {}, "logs": "", "attempts": 1,
                "backend": "local", "labels": {}, "created_at": now, "updated_at": now,
            }
            for uid, (state, results) in OLD_ROWS.items()
        ]
        with engine.begin() as connection:
            connection.execute(runs_table.insert(), rows)

        migrate.upgrade(engine)
        upgraded = _rows(engine)
        assert upgraded == UPGRADED
        assert list(upgraded["trial"][1]) == ["score", "z"]  # the other results keep their order
        with Store(db_url, project="old") as store:
            assert sorted(r.uid for r in store.list_runs(state="pruned")) == ["bare", "trial"]

        migrate.downgrade(engine, "0004_run_drivers")
        downgraded = _rows(engine)
        assert downgraded == OLD_ROWS
        assert list(downgraded["trial"][1]) == ["score", "z", "pruned"]  # the marker goes back at the end
        migrate.upgrade(engine)
        assert _rows(engine) == UPGRADED
    finally:
        engine.dispose()
