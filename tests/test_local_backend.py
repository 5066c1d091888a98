"""The local backend against the backend contract (backends/base.py), used directly and through runs:
submit, as_completed, scale, adapt, workers, close, cancellation, concurrency bounded by the replicas."""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import signal
import subprocess
import sys
import uuid

import pytest

import shoal
import shoal.backends
from shoal.backends import Backend, BackendFuture
from shoal.execution import execute

from handler_sources import handler_functions
from helpers import alive, kill_by_pid, task, wait_for


@pytest.fixture
def fn(tmp_path):
    return handler_functions(tmp_path)


def _counter(tmp_path) -> str:
    path = tmp_path / f"counter-{uuid.uuid4().hex[:6]}.json"
    path.write_text("{}")
    return str(path)


def test_get_local_as_a_context_manager(fn):
    square = fn("square")
    with shoal.backends.get("local", n_workers=2) as backend:
        assert isinstance(backend, Backend) and backend.name == "local" and backend.slots == 2
        futures = [backend.submit(task(square, {"x": i})) for i in range(5)]
        assert all(isinstance(f, BackendFuture) for f in futures)
        outcomes = [f.result(30) for f in futures]
        assert [o.results for o in outcomes] == [{"square": i * i, "pid": os.getpid()} for i in range(5)]
        assert all(o.state == "completed" and o.logs == f"square of {i}\n" for i, o in enumerate(outcomes))
        done = list(backend.as_completed(futures, timeout=30))
        assert sorted(f.uid for f in done) == sorted(f.uid for f in futures)
    with pytest.raises(shoal.BackendError, match="closed"):
        backend.submit(task(square, {"x": 1}))
    backend.close()  # idempotent


def test_on_start_is_called(fn):
    started = []
    with shoal.backends.get("local") as backend:
        outcome = backend.submit(task(fn("square"), {"x": 2}), lambda uid, at: started.append((uid, at))).result(30)
    assert [uid for uid, _ in started] == [outcome.uid]
    assert started[0][1] == outcome.started_at


def test_as_completed_times_out(fn):
    with shoal.backends.get("local", n_workers=1) as backend:
        fast = backend.submit(task(fn("square"), {"x": 3}))
        slow = backend.submit(task(fn("looper")))
        seen = []
        with pytest.raises(TimeoutError):
            for future in backend.as_completed([fast, slow], timeout=0.5):
                seen.append(future)
        assert seen == [fast]
        assert slow.cancel() is True
        assert slow.result(30).state == "cancelled"


def test_cancel_pending_and_running_futures(fn, tmp_path):
    marker = tmp_path / "started"
    with shoal.backends.get("local", n_workers=1) as backend:
        running = backend.submit(task(fn("looper"), {"marker": str(marker)}))
        pending = backend.submit(task(fn("square"), {"x": 1}))
        wait_for(marker.exists)
        assert [w.state for w in backend.workers()] == ["busy"]
        assert backend.workers()[0].running == (running.uid,)
        assert pending.cancel() is True
        with pytest.raises(cf.CancelledError):
            pending.result(30)
        assert running.cancel() is True
        outcome = running.result(30)
        assert outcome.state == "cancelled" and outcome.error["type"] == "CancelledError"
        assert running.cancel() is False  # already done
        wait_for(lambda: all(w.state == "idle" for w in backend.workers()))


def test_close_stops_running_tasks(fn, tmp_path):
    marker = tmp_path / "started"
    backend = shoal.backends.get("local", n_workers=2)
    running = backend.submit(task(fn("looper"), {"marker": str(marker)}))
    wait_for(marker.exists)
    backend.close()
    assert running.done()
    assert running.result().state == "cancelled"


def test_close_does_not_hang_on_a_blocked_task_with_a_timeout(fn):
    """A run with a timeout is supervised: stopping it works even while it is blocked in a call."""
    backend = shoal.backends.get("local", n_workers=1)
    future = backend.submit(task(fn("nap"), {"seconds": 60}, timeout=120))
    wait_for(lambda: backend.workers() and backend.workers()[0].state == "busy")
    backend.close()
    assert future.result().state == "cancelled"


def test_timeout_of_a_blocked_task_in_a_worker_thread(fn):
    with shoal.backends.get("local") as backend:
        outcome = backend.submit(task(fn("nap"), {"seconds": 60}, timeout=0.2)).result(30)
    assert outcome.state == "failed" and outcome.error["type"] == "TimeoutError"


def test_timeout_in_the_main_thread(fn):
    outcome = execute(task(fn("nap"), {"seconds": 60}, timeout=0.2))
    assert outcome.state == "failed" and outcome.error["type"] == "TimeoutError"
    assert execute(task(fn("square"), {"x": 5}, timeout=10)).results == {"square": 25, "pid": os.getpid()}


def test_scale_adapt_workers_and_events():
    backend = shoal.backends.get("local", n_workers=2)
    try:
        assert backend.slots == 2 and backend.workers() == []
        backend.adapt(1, 4)
        assert backend.slots == 4
        backend.scale(3)
        assert backend.slots == 3
        events = backend.scaling_events()
        assert [(e.workers_before, e.workers_after, e.direction) for e in events] == [(2, 4, "up"), (4, 3, "down")]
        for bad in ((3, 1), (-1, 2), (0, 0)):
            with pytest.raises(shoal.BackendError):
                backend.adapt(*bad)
        with pytest.raises(shoal.BackendError):
            backend.scale(0)
    finally:
        backend.close()


def test_unknown_backends_and_options():
    with pytest.raises(shoal.BackendError, match="unknown backend 'nosuch'"):
        shoal.backends.get("nosuch")
    with pytest.raises(shoal.BackendError, match="unknown option 'bogus'"):
        shoal.backends.get("local", bogus=1)
    with pytest.raises(shoal.BackendError, match="n_workers"):
        shoal.backends.get("local", n_workers=0)
    with pytest.raises(shoal.BackendError):
        shoal.backends.get("")
    assert "local" in shoal.backends.available()


def test_unknown_backend_name_in_a_run_records_nothing(project, fn):
    with pytest.raises(shoal.BackendError, match="nosuch"):
        fn("square").run({"x": 1}, backend="nosuch", project=project, watch=False)
    assert project.store.count_runs() == 0


@pytest.mark.parametrize("replicas", [(1, 1), (0, 2), (1, 3)])
def test_concurrency_never_exceeds_max_replicas(project, fn, tmp_path, replicas):
    maximum = replicas[1]
    counter = _counter(tmp_path)
    runs = fn("concurrent", replicas=replicas).map(
        [{"counter": counter, "pair": maximum} for _ in range(2 * maximum)], project=project
    )
    assert all(r.state == "completed" for r in runs), [r.error for r in runs]
    state = json.loads(open(counter).read())
    assert state["now"] == 0
    assert state["peak"] == maximum  # reached, never exceeded


def test_a_backend_object_passed_to_run(project, fn, tmp_path):
    counter = _counter(tmp_path)
    with shoal.backends.get("local", n_workers=2) as backend:
        runs = fn("concurrent").map([{"counter": counter, "pair": 2} for _ in range(4)], backend=backend, project=project)
        assert backend.slots == 2  # the caller's backend is used as given
    assert all(r.backend == "local" and r.state == "completed" for r in runs)
    assert json.loads(open(counter).read())["peak"] == 2


def test_submit_on_a_closed_backend_records_a_failed_run(project, fn):
    backend = shoal.backends.get("local")
    backend.close()
    run = fn("square").run({"x": 2}, backend=backend, project=project, watch=False)
    assert run.state == "failed" and run.error["type"] == "BackendError" and "closed" in run.error["message"]
    assert project.runs.get(run.uid) == run


def test_other_functions_in_between_do_not_raise_the_bound(project, fn, tmp_path):
    """Runs of one function submitted around a run of a function with other replicas share one bound."""
    counter = _counter(tmp_path)
    bounded, other = fn("concurrent", replicas=(1, 2)), fn("square", replicas=(1, 1))
    params = {"counter": counter, "pair": 2, "hold": 0.3}
    handles = [bounded.submit(params, project=project) for _ in range(2)]
    handles.append(other.submit({"x": 3}, project=project))
    handles += [bounded.submit(params, project=project) for _ in range(2)]
    assert [h.result(30).state for h in handles] == ["completed"] * 5
    assert json.loads(open(counter).read())["peak"] == 2


# -- runs that set env run in a process of their own ---------------------------------------------------
ENV = {"SHOAL_TEST_VALUE": "per-run"}


def test_a_run_with_env_runs_in_its_own_process_with_results_logs_and_artifacts(fn, tmp_path):
    started = []
    with shoal.backends.get("local") as backend:
        outcome = backend.submit(
            task(fn("logs_everything"), {"n": 2}, tmp_path / "store", env=ENV), lambda uid, at: started.append(at)
        ).result(60)
        plain = backend.submit(task(fn("echo_env"), env={})).result(60)
        echoed = backend.submit(task(fn("echo_env"), env=ENV)).result(60)
    assert outcome.state == "completed", outcome.error
    assert outcome.results["accuracy"] == 0.75 and outcome.results["pid"] != os.getpid()
    assert outcome.metrics == {"loss": [[0, 1.0], [1, 0.5]]}
    assert sorted(a["key"] for a in outcome.artifacts) == ["notes", "weights"]
    assert all(os.path.exists(a["url"].removeprefix("file://")) for a in outcome.artifacts)
    assert "through print" in outcome.logs and "through the logger" in outcome.logs
    assert started == [outcome.started_at]  # the child's start reached on_start
    assert echoed.results == {"value": "per-run"} and plain.results == {"value": None}
    assert "SHOAL_TEST_VALUE" not in os.environ


def test_a_run_with_env_is_cancelled_and_times_out_in_its_own_process(fn, tmp_path):
    marker = tmp_path / "started"
    with shoal.backends.get("local", n_workers=2) as backend:
        running = backend.submit(task(fn("looper"), {"marker": str(marker)}, env=ENV))
        wait_for(marker.exists)
        child = int(marker.read_text())
        assert child != os.getpid()
        timed = backend.submit(task(fn("nap"), {"seconds": 60}, timeout=0.5, env=ENV)).result(60)
        assert running.cancel() is True
        outcome = running.result(60)
    assert outcome.state == "cancelled" and outcome.error["type"] == "CancelledError"
    assert outcome.metrics["step"][0] == [0, 0]  # what it logged before the stop came back
    assert timed.state == "failed" and timed.error["type"] == "TimeoutError"
    wait_for(lambda: not alive(child), what="the run's process to exit")


def test_close_stops_a_run_with_env_and_leaves_no_process(fn, tmp_path):
    marker = tmp_path / "started"
    backend = shoal.backends.get("local")
    running = backend.submit(task(fn("looper"), {"marker": str(marker)}, env=ENV))
    wait_for(marker.exists)
    child = int(marker.read_text())
    backend.close()
    assert running.result().state == "cancelled"
    wait_for(lambda: not alive(child), what="the run's process to exit")


def test_a_run_with_env_whose_process_dies_fails_as_lost(fn, tmp_path):
    with shoal.backends.get("local") as backend:
        exited = backend.submit(task(fn("exits"), env=ENV)).result(60)
        killed_marker = tmp_path / "victim.pid"
        victim = backend.submit(task(fn("victim"), {"pidfile": str(killed_marker)}, env=ENV))
        wait_for(killed_marker.exists)
        os.kill(int(killed_marker.read_text()), signal.SIGKILL)  # not reaped here: its parent reports it
        lost = victim.result(60)
    assert exited.state == "failed" and exited.error["type"] == "SystemExit"  # as in a thread
    assert lost.state == "failed" and lost.error["type"] == "WorkerLostError"
    assert "exited with code -9 before it reported" in lost.error["message"]


def test_a_recorded_run_with_env_and_retries(project, fn, tmp_path):
    marker = tmp_path / "flaky"
    run = fn("flaky", env=ENV, retries=1).run({"marker": str(marker)}, backend="local", project=project, watch=False)
    assert run.state == "completed" and run.results == {"attempt": 2} and run.attempts == 2
    assert "first attempt fails" in run.logs and "second attempt works" in run.logs
    assert project.runs.get(run.uid).results == {"attempt": 2}


def test_a_process_is_reused_by_runs_with_the_same_env_and_not_after_a_stop(fn, tmp_path):
    with shoal.backends.get("local") as backend:
        first, second = (backend.submit(task(fn("nap"), {"seconds": 0}, env=ENV)).result(60) for _ in range(2))
        other = backend.submit(task(fn("nap"), {"seconds": 0}, env={"SHOAL_TEST_VALUE": "other"})).result(60)
        assert first.results["pid"] == second.results["pid"] != os.getpid()
        assert other.results["pid"] != first.results["pid"]
        marker = tmp_path / "started"
        stopped = backend.submit(task(fn("looper"), {"marker": str(marker)}, env=ENV))
        wait_for(marker.exists)
        assert int(marker.read_text()) == first.results["pid"]
        stopped.cancel()
        assert stopped.result(60).state == "cancelled"
        after = backend.submit(task(fn("nap"), {"seconds": 0}, env=ENV)).result(60)
        assert after.results["pid"] != first.results["pid"]  # a stopped run's process is not reused
    wait_for(lambda: not any(alive(r.results["pid"]) for r in (first, other, after)), what="idle processes to exit")


DRIVER = """
import sys
import shoal

handlers, marker, folder = sys.argv[1:]
fn = shoal.Function.from_file(handlers, "looper", env={"SHOAL_TEST_VALUE": "x"})
fn.run({"marker": marker, "steps": 100000}, backend="local", project=shoal.Project(folder, name="killed"))
"""


def test_a_killed_driver_leaves_no_run_process_behind(tmp_path):
    from handler_sources import write_handlers

    script, marker = tmp_path / "driver.py", tmp_path / "started"
    script.write_text(DRIVER)
    driver = subprocess.Popen([sys.executable, str(script), str(write_handlers(tmp_path)), str(marker), str(tmp_path)])
    try:
        wait_for(marker.exists, what="the run to start")
        child = int(marker.read_text())
        assert child != driver.pid and alive(child)
        driver.kill()
        driver.wait(30)
        wait_for(lambda: not alive(child), what="the run's process to exit after its driver died")
    finally:
        kill_by_pid([driver.pid] + ([int(marker.read_text())] if marker.exists() else []))
