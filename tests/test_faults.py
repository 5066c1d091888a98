"""Faults on the dask backend: a worker process killed in the middle of a run, a scheduler that
cannot be reached or goes away, and Ctrl-C in a process running ``fn.map``.

Every process a test starts (schedulers, workers, scripts) is ended by PID; nothing is found or
killed by name.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from handler_sources import handler_functions
from helpers import alive, descendants, free_port, interrupt_map, interrupted_runs, kill_by_pid, wait_for

import shoal
from shoal.backends.dask import DaskBackend

# One xdist worker runs the module, so its tests share one ``two_workers`` cluster.
pytestmark = pytest.mark.xdist_group("faults")


@pytest.fixture
def fn(tmp_path):
    return handler_functions(tmp_path)


@pytest.fixture(scope="module")
def two_workers():
    """An embedded cluster of two worker processes that these tests may kill workers of."""
    backend = DaskBackend(n_workers=2)
    backend.start()
    yield backend
    backend.close()


def finishes(call, limit: float = 120.0):
    """``call()`` in a thread; its result, or AssertionError if it is still running after ``limit`` s
    (the test's guard against a hang, far above the expected time)."""
    box: dict = {}

    def target() -> None:
        try:
            box["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(limit)
    if thread.is_alive():
        raise AssertionError(f"still running after {limit} s: it hangs")
    if "error" in box:
        raise box["error"]
    return box.get("value")


# -- a worker process killed mid-run --------------------------------------------------------------
@pytest.mark.parametrize("retries", [0, 1])
def test_worker_killed_mid_run(two_workers, project, fn, tmp_path, retries):
    backend = two_workers
    wait_for(lambda: len(backend.workers()) == 2, what="two workers")  # a killed one is restarted
    pidfile, log = tmp_path / "pid", tmp_path / "bystanders.log"
    victim = fn("victim", retries=retries).submit({"pidfile": str(pidfile)}, backend=backend, project=project)
    wait_for(lambda: pidfile.exists() and pidfile.read_text(), what="victim start")
    wait_for(lambda: victim.state == "running", what="running state")
    [where] = [w.address for w in backend.workers() if victim.uid in w.running]

    bystander = fn("bystander")
    others = [bystander.submit({"i": i, "log": str(log)}, backend=backend, project=project) for i in range(6)]
    # One of them waits in the victim's worker queue: it never started, so it must not be lost.
    wait_for(lambda: len(backend.client.processing().get(where, ())) >= 2, what="a bystander queued on the victim's worker")
    killed = int(pidfile.read_text())
    os.kill(killed, signal.SIGKILL)

    run = victim.result(120)
    if retries == 0:
        assert run.state == "failed" and run.attempts == 1
        assert run.error["type"] == "WorkerLostError"
        assert run.error["message"].startswith("worker lost")
    else:
        assert run.state == "completed", run.error
        assert run.attempts == 2 and run.results["attempt"] == 2
        assert run.results["pid"] != killed  # the retry ran in another worker process
    assert project.runs.get(run.uid) == run

    outcomes = [h.result(120) for h in others]
    assert [r.state for r in outcomes] == ["completed"] * 6, [r.error for r in outcomes]
    assert sorted(int(line) for line in log.read_text().split()) == list(range(6))  # none lost, none twice


# -- the engine cannot be reached -----------------------------------------------------------------
def test_unreachable_scheduler_is_a_clear_error(project, fn):
    backend = DaskBackend("dask://127.0.0.1:1", connect_timeout=2)
    with pytest.raises(shoal.BackendError, match=r"cannot reach the dask scheduler at tcp://127\.0\.0\.1:1"):
        finishes(backend.start)

    other = DaskBackend("dask://127.0.0.1:1", connect_timeout=2)
    with pytest.raises(shoal.BackendError, match=r"127\.0\.0\.1:1"):
        finishes(lambda: fn("square").run({"x": 2}, backend=other, project=project, watch=False))
    assert project.runs.list() == []  # refused before anything was recorded
    other.close()
    backend.close()


def test_scheduler_going_away_mid_run(project, fn, tmp_path):
    dask = str(Path(sys.executable).parent / "dask")
    port = free_port()
    logs = open(tmp_path / "cluster.log", "w")
    scheduler = subprocess.Popen(
        [dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"], stdout=logs, stderr=logs
    )
    worker = subprocess.Popen(
        [dask, "worker", f"tcp://127.0.0.1:{port}", "--nworkers", "1", "--nthreads", "1", "--no-dashboard", "--death-timeout", "20"],
        stdout=logs,
        stderr=logs,
    )
    started = [scheduler.pid, worker.pid]
    backend = DaskBackend(f"dask://127.0.0.1:{port}", connect_timeout=30)
    try:
        backend.start()
        wait_for(lambda: len(backend.workers()) == 1, what="the worker joining")
        started += descendants(worker.pid)  # the nanny's worker process
        looper = fn("looper")  # runs >= 30 s: neither can end before the scheduler is gone
        markers = [tmp_path / "started-0", tmp_path / "started-1"]
        handles = [looper.submit({"marker": str(m)}, backend=backend, project=project) for m in markers]
        # Either may start first; the worker's one thread keeps the other waiting.
        wait_for(lambda: any(m.exists() for m in markers), what="a run start")

        scheduler.kill()
        scheduler.wait(30)
        assert [m.exists() for m in markers].count(True) == 1  # one running, one waiting
        for handle in handles:
            run = handle.result(120)
            assert run.state == "failed"
            assert run.error["type"] == "BackendError"
            assert "lost the connection to the scheduler" in run.error["message"]
            assert project.runs.get(run.uid) == run
        finishes(backend.close)
    finally:
        backend.close()
        started += [pid for pid in descendants(worker.pid) if pid not in started]  # any born since
        kill_by_pid(started)
        logs.close()
    assert not any(alive(pid) for pid in started)


def test_a_batch_whose_worker_dies_loses_no_run(two_workers, project, fn, tmp_path):
    backend = two_workers
    wait_for(lambda: len(backend.workers()) == 2, what="two workers")
    marker = tmp_path / "died"
    items = [{"i": i, "die_on": 3, "marker": str(marker)} for i in range(24)]
    runs = finishes(lambda: fn("dies_once", retries=1).map(items, backend=backend, project=project, batch_size=6))
    assert marker.exists()  # a worker really died mid-batch
    # Runs of the lost batch that had started are retried (retries=1), the others sent again as
    # they never ran: none is lost, none recorded twice.
    assert [r.state for r in runs] == ["completed"] * 24, [(r.iteration, r.error) for r in runs if r.state != "completed"]
    assert [r.results["i"] for r in runs] == list(range(24))
    assert project.store.count_runs(parent=runs[0].parent) == 24


# -- Ctrl-C ---------------------------------------------------------------------------------------
def test_ctrl_c_cancels_pending_runs_and_leaves_no_process(tmp_path):
    folder = interrupt_map(tmp_path, "dask")
    parent, children_runs = interrupted_runs(folder)
    assert parent.state == "cancelled"
    assert [r.state for r in children_runs] == ["cancelled"] * 4
    assert all(r.error["type"] == "CancelledError" for r in children_runs)
    began = {int(p.name.split("-")[1]) for p in folder.glob("started-*")}
    assert any(r.started_at is not None for r in children_runs)  # the running one was stopped
    for run in children_runs:
        if run.iteration not in began:  # pending when Ctrl-C came: recorded as never started
            assert run.started_at is None and run.attempts == 0


def test_ctrl_c_cancels_a_map_sent_in_batches(tmp_path):
    folder = interrupt_map(tmp_path, "dask", count=12, batch_size=4)
    parent, children_runs = interrupted_runs(folder)
    assert parent.state == "cancelled"
    assert [r.state for r in children_runs] == ["cancelled"] * 12, [(r.state, r.error) for r in children_runs]
    began = {int(p.name.split("-")[1]) for p in folder.glob("started-*")}
    # The batches start in the order they were sent (the one worker thread takes the first), and
    # Ctrl-C cancels the waiting batches before it stops the running run: no later batch starts.
    assert 0 in began and began <= {0, 1, 2, 3}, began
    for run in children_runs:
        if run.iteration not in began:
            assert run.started_at is None and run.attempts == 0
