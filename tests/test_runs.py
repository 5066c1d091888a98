"""Running functions and recording runs: fn.run / submit / map, the Run record, failures, retries,
timeouts, cancellation and bounded logs, on real SQLite and PostgreSQL (no mocks).

Handlers (tests/handler_sources.py) live in a real file written into the test folder and are loaded
with Function.from_file.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

import shoal
from shoal.logcapture import DEFAULT_LIMIT

from handler_sources import handler_functions
from helpers import wait_for


@shoal.function(replicas=(1, 2), retries=1)
def module_level(x: int = 1):
    """A decorated handler defined in this test file (its code is this file)."""
    return {"x": x}


@pytest.fixture
def fn(tmp_path):
    """fn(handler, **options): a Function from the handlers file in the test folder."""
    return handler_functions(tmp_path)


# looper: 1500 metric steps, 0.02 s apart (30 s unless stopped)
LOOPER_STEPS = {"steps": 1500, "pause": 0.02}


def run_rows(project: shoal.Project) -> int:
    return project.store.count_runs()


# -- the Run record ---------------------------------------------------------------------------
def test_run_is_recorded_and_found_again(any_project, fn):
    add = fn("add")
    run = add.run({"x": 3}, project=any_project, watch=False)

    assert run.state == "completed"
    assert run.results == {"sum": 4.0, "pid": os.getpid()}  # local runs are threads of this process
    assert run.function == "add" and run.function_hash == add.hash
    assert run.params == {"x": 3}  # what was given (and spec defaults); the hash pins the rest
    assert run.attempts == 1 and run.error is None and run.parent is None
    assert "adding 3 1.0" in run.logs
    assert run.started_at is not None and run.ended_at >= run.started_at and run.duration >= 0
    # the function version was saved before running
    assert any_project.functions.get("add").hash == add.hash

    stored = any_project.runs.get(run.uid)
    assert stored == run  # every field, timestamps included
    assert any_project.runs.get(run.uid[:10]) == run
    assert stored.to_dict() == run.to_dict()


def test_list_filters_give_the_same_runs(any_project, fn):
    add, scalar = fn("add"), fn("scalar")
    first = add.run({"x": 1}, project=any_project, watch=False)
    second = add.run({"x": 2}, project=any_project, watch=False)
    other = scalar.run(project=any_project, watch=False)
    failed = fn("always_fails").run(project=any_project, watch=False)

    listed = any_project.runs.list(function="add")
    assert {r.uid for r in listed} == {first.uid, second.uid}
    assert {r.uid: r for r in listed} == {first.uid: first, second.uid: second}
    assert any_project.runs.list(state="failed") == [failed]
    assert len(any_project.runs.list(limit=2)) == 2
    assert other in any_project.runs.list(function="scalar")


def test_auto_logging_of_return_values(project, fn):
    assert fn("scalar").run({"x": 4}, project=project, watch=False).results == {"return": 40}
    assert fn("nothing").run(project=project, watch=False).results == {}
    run = fn("numpy_values").run(project=project, watch=False)
    assert run.results == {"f": 0.5, "i": 3, "b": True, "nan": "NaN", "t": [1, 2]}
    assert type(run.results["f"]) is float and type(run.results["i"]) is int
    assert project.runs.get(run.uid).results == run.results


def test_unjsonable_result_becomes_an_artifact(any_project, fn):
    run = fn("unjsonable").run(project=any_project, watch=False)
    assert run.state == "completed"
    assert run.results == {"ok": 1}
    assert set(run.artifacts) == {"arr"}
    np.testing.assert_array_equal(run.artifacts["arr"].load(), np.arange(4))
    np.testing.assert_array_equal(any_project.runs.get(run.uid).output("arr"), np.arange(4))


# -- failures -----------------------------------------------------------------------------------
def test_failure_keeps_everything_logged_before(any_project, fn):
    run = fn("logs_then_fails").run(project=any_project, watch=False)
    assert run.state == "failed"
    assert run.error["type"] == "ValueError"
    assert run.error["message"] == "broken on purpose"
    assert "raise ValueError" in run.error["traceback"] and "handlers.py" in run.error["traceback"]
    assert run.results == {"accuracy": 0.9}
    assert run.metrics == {"loss": [[0, 1.0], [1, 0.5], [2, "NaN"]]}
    np.testing.assert_array_equal(run.artifacts["weights"].load(), np.ones(3))
    assert "about to fail" in run.logs
    assert any_project.runs.get(run.uid) == run
    with pytest.raises(shoal.RunFailedError, match="broken on purpose"):
        run.raise_for_state()


def test_retry_of_a_flaky_handler_completes_on_the_second_attempt(any_project, fn, tmp_path):
    flaky = fn("flaky", retries=2)
    run = flaky.run({"marker": str(tmp_path / "marker")}, project=any_project, watch=False)
    assert run.state == "completed"
    assert run.attempts == 2
    assert run.results == {"attempt": 2}
    assert "first attempt fails" in run.logs and "second attempt works" in run.logs
    assert any_project.runs.get(run.uid) == run


def test_retries_exhausted_counts_every_attempt(project, fn):
    run = fn("always_fails", retries=2).run(project=project, watch=False)
    assert run.state == "failed" and run.attempts == 3
    assert run.error["type"] == "KeyError"
    assert run.logs.count("failing") == 3
    assert "--- attempt 3 ---" in run.logs
    assert project.runs.get(run.uid).attempts == 3


def test_timeout_stops_a_blocked_handler(any_project, fn):
    run = fn("sleeper", timeout=0.3).run(project=any_project, watch=False)
    assert run.state == "failed"
    assert run.error["type"] == "TimeoutError"
    assert "timeout" in run.error["message"]
    assert run.results == {"before": 1}  # logged before the timeout
    assert "going to sleep" in run.logs
    assert any_project.runs.get(run.uid) == run


def test_timeout_is_retried(project, fn):
    run = fn("sleeper", timeout=0.2, retries=1).run({"seconds": 30}, project=project, watch=False)
    assert run.state == "failed" and run.attempts == 2 and run.error["type"] == "TimeoutError"


def test_env_of_the_function_reaches_the_handler(project, fn):
    run = fn("echo_env", env={"SHOAL_TEST_VALUE": "42"}).run(project=project, watch=False)
    assert run.results == {"value": "42"}


# -- submit and cancel --------------------------------------------------------------------------
def test_submit_returns_a_handle(project, fn):
    handle = fn("add").submit({"x": 1}, project=project)
    assert isinstance(handle, shoal.RunHandle)
    assert handle.wait(30) is True
    run = handle.result()
    assert handle.state == "completed" == run.state
    assert run.uid == handle.uid and run.results == {"sum": 2.0, "pid": os.getpid()}
    assert handle.cancel() is False  # already finished


def test_result_with_timeout_on_an_unfinished_run(project, fn, tmp_path):
    handle = fn("looper").submit(LOOPER_STEPS, project=project)
    with pytest.raises(shoal.RunTimeoutError):
        handle.result(timeout=0.05)
    assert handle.wait(0.01) is False
    assert handle.cancel() is True
    assert handle.result(30).state == "cancelled"


def test_cancel_pending_and_running_runs(any_project, fn, tmp_path):
    looper = fn("looper", replicas=(1, 1))  # one thread: the second run waits
    marker = tmp_path / "started"
    first = looper.submit({"marker": str(marker), **LOOPER_STEPS}, project=any_project)
    second = looper.submit({"marker": str(tmp_path / "never"), **LOOPER_STEPS}, project=any_project)
    wait_for(marker.exists)
    wait_for(lambda: first.state == "running")
    assert second.state == "pending"

    assert second.cancel() is True
    assert first.cancel() is True
    pending, running = second.result(30), first.result(30)

    assert pending.state == "cancelled" and pending.started_at is None and pending.attempts == 0
    assert pending.error["type"] == "CancelledError"
    assert not (tmp_path / "never").exists()  # the pending run never started
    assert running.state == "cancelled" and running.error["type"] == "CancelledError"
    assert running.started_at is not None
    assert 1 <= len(running.metrics["step"]) < 1500  # stopped before the end, what it logged is kept
    assert any_project.runs.get(pending.uid) == pending
    assert any_project.runs.get(running.uid) == running
    assert {r.uid for r in any_project.runs.list(state="cancelled")} == {pending.uid, running.uid}


# -- map ----------------------------------------------------------------------------------------
def test_map_one_parent_children_in_order(any_project, fn):
    pick = fn("pick", replicas=(1, 3))
    runs = pick.map([{"i": i} for i in range(6)], project=any_project)
    assert [r.results["square"] for r in runs] == [0, 1, 4, 9, 16, 25]
    assert [r.iteration for r in runs] == list(range(6))
    parents = {r.parent for r in runs}
    assert len(parents) == 1 and None not in parents
    parent = any_project.runs.get(parents.pop())
    assert parent.state == "completed" and parent.results["completed"] == 6
    children = any_project.runs.list(parent=parent.uid)
    assert sorted(children, key=lambda r: r.iteration) == runs


def test_map_failed_child_does_not_lose_the_others(project, fn):
    runs = fn("pick").map([{"i": i, "fail_on": 2} for i in range(4)], project=project)
    assert [r.state for r in runs] == ["completed", "completed", "failed", "completed"]
    assert runs[2].error["message"] == "item 2 fails"
    assert runs[3].results == {"square": 9}
    parent = project.runs.get(runs[0].parent)
    assert parent.state == "failed"
    assert parent.error["type"] == "MapError" and "iteration 2" in parent.error["message"]
    assert parent.results == {"completed": 3, "failed": 1, "cancelled": 0}


def test_map_rejects_a_bad_item_before_recording_anything(project, fn):
    with pytest.raises(shoal.ParamError, match=r"params\[1\]"):
        fn("pick").map([{"i": 1}, {"i": "not a number"}], project=project)
    assert run_rows(project) == 0
    with pytest.raises(shoal.ParamError):
        fn("pick").map({"i": 1}, project=project)


def test_map_of_nothing(project, fn):
    assert fn("pick").map([], project=project) == []


# -- logs -----------------------------------------------------------------------------------------
def test_logs_are_bounded_and_keep_the_end(any_project, fn):
    lines = 12_000  # ~1.3 MB of output
    run = fn("chatty").run({"lines": lines}, project=any_project, watch=False)
    assert run.state == "completed"
    assert len(run.logs) <= DEFAULT_LIMIT + 100
    assert run.logs.rstrip("\n").endswith("THE LAST LINE")
    assert "earlier characters dropped" in run.logs
    assert f"line {lines - 1:07d}" in run.logs and "line 0000000 " not in run.logs
    assert any_project.runs.get(run.uid).logs == run.logs


def test_nul_characters_are_recorded(any_project, fn):
    run = fn("nul_logger").run(project=any_project, watch=False)
    stored = any_project.runs.get(run.uid)
    assert stored.state == "completed"  # PostgreSQL text cannot hold NUL: it must not block the record
    assert stored == run
    assert "a\ufffdb" in stored.logs
    assert stored.results == {"text": "c\x00d"}


def test_logs_of_concurrent_runs_do_not_mix(project, fn):
    runs = fn("add", replicas=(1, 4)).map([{"x": i} for i in range(8)], project=project)
    for i, run in enumerate(runs):
        assert run.logs == f"adding {i} 1.0\n"


def test_nan_metric_recorded_the_same_everywhere(any_project, fn):
    run = fn("logs_then_fails").run(project=any_project, watch=False)
    value = any_project.runs.get(run.uid).metrics["loss"][2][1]
    assert value == "NaN" and math.isnan(float(value))


def test_inputs_hold_urls_not_data(any_project, fn, tmp_path):
    data = np.arange(10_000, dtype=np.float64)
    run = fn("scalar").run({"x": 1}, project=any_project, watch=False)
    assert run.inputs == {}
    with_input = fn("summed").run({"x": 1}, inputs={"data": data}, project=any_project, watch=False)
    assert with_input.results == {"total": float(data.sum())}
    url = with_input.inputs["data"]
    assert isinstance(url, str) and url.endswith(".npy")
    engine = any_project.store.engine
    with engine.connect() as connection:
        text = connection.execute(
            sa.text("select cast(inputs as text) from runs where uid = :uid"), {"uid": with_input.uid}
        ).scalar()
    assert len(text) < 500 and Path(url.removeprefix("file://")).stat().st_size > data.nbytes


def test_logger_stderr_and_echo(project, fn, capsys):
    run = fn("uses_logger").run(project=project, watch=True)
    assert "through the logger" in run.logs and "through print" in run.logs and "to stderr" in run.logs
    echoed = capsys.readouterr()
    assert "through print" in echoed.out  # watch=True also shows the output as it happens
    quiet = fn("uses_logger").run(project=project, watch=False)
    assert "through print" in quiet.logs and "through print" not in capsys.readouterr().out


def test_sys_exit_in_a_handler_is_a_failure(project, fn):
    run = fn("exits").run(project=project, watch=False)
    assert run.state == "failed" and run.error["type"] == "SystemExit" and run.error["message"] == "3"


def test_async_handler_is_awaited(project, fn):
    run = fn("coroutine").run({"x": 21}, project=project, watch=False)
    assert run.state == "completed" and run.results == {"double": 42}


def test_decorated_module_level_function(any_project):
    assert module_level.replicas.max == 2 and module_level.spec.retries == 1
    runs = module_level.map([{"x": 1}, {"x": 2}], project=any_project)
    assert [r.results for r in runs] == [{"x": 1}, {"x": 2}]
    assert any_project.functions.get("module_level").hash == module_level.hash
    assert any_project.runs.get(runs[1].uid) == runs[1]


def test_an_outcome_that_cannot_be_recorded_still_resolves_the_handle(tmp_path, monkeypatch, fn):
    monkeypatch.chdir(tmp_path)
    project = shoal.Project(tmp_path, name="closing")
    marker = tmp_path / "started"
    handle = fn("looper").submit({"marker": str(marker), **LOOPER_STEPS}, project=project)
    wait_for(marker.exists)
    project.close()  # the database goes away while the run is in flight
    handle.cancel()
    run = handle.result(30)
    assert run.state == "failed"
    assert run.error["type"] == "StoreError"
    assert "ended cancelled but its outcome could not be recorded" in run.error["message"]


def test_writing_bytes_to_stdout_fails_like_a_real_stream(project, fn):
    run = fn("writes_bytes").run(project=project, watch=False)
    assert run.state == "failed" and run.error["type"] == "TypeError"
    assert run.logs == "text first\n"


def test_recorder_thread_ends_when_idle_and_comes_back(project, fn, monkeypatch):
    import shoal.recorder

    monkeypatch.setattr(shoal.recorder, "IDLE_EXIT", 0.05)
    first = fn("scalar").run(project=project, watch=False)
    recorder = project.recorder
    wait_for(lambda: recorder._thread is None)  # idle: no thread left behind
    second = fn("scalar").run({"x": 3}, project=project, watch=False)
    assert project.runs.get(first.uid) == first and project.runs.get(second.uid) == second


def test_run_of_builds_the_run_its_constructor_builds():
    """``run_of`` (the dispatcher's one-step Run) equals ``Run(...)`` of the same fields."""
    import dataclasses
    from datetime import datetime, timezone

    from shoal.runs import Run, run_of

    now = datetime.now(timezone.utc)
    values = {field.name: None for field in dataclasses.fields(Run)}
    values.update(uid="u" * 32, function="f", function_hash="h", state="completed", params={"x": 1}, started_at=now)
    built = run_of(dict(values))
    assert built == Run(**values) and built.ok and built.params == {"x": 1}
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.state = "failed"  # type: ignore[misc]


def test_a_run_that_stores_nothing_never_opens_the_artifact_store(fn):
    """A Context opens its artifact store when the handler first stores something: a run that
    stores nothing completes even where the store cannot be opened (``execute`` never raises)."""
    from helpers import task

    from shoal.execution import execute

    outcome = execute(task(fn("add"), {"x": 1}, artifacts="nosuchprotocol://bucket"))
    assert outcome.state == "completed", outcome.error
