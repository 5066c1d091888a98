"""What only the dask backend does: an embedded cluster, an existing scheduler given by address,
a cluster object passed in, autoscaling between replicas with Dask's own Adaptive, requirements
through Dask's PipInstall plugin, and the embedded cluster of a script's own process.

Real Dask clusters, no mocks; every test closes the clusters it starts, and checks by PID that
their worker processes are gone where it matters.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import subprocess
import sys

import pytest

import shoal
import shoal.backends
from shoal.backends.dask import DaskBackend, requirements_plugin_name

from handler_sources import handler_functions
from helpers import alive, task, wait_for

MAIN_SCRIPT = '''
import concurrent.futures as cf
import json
import os
import sys

import shoal
import shoal.backends


@shoal.function(replicas=(1, 2))
def cube(x: int):
    return {"cube": x ** 3, "module": __name__, "pid": os.getpid()}


if __name__ == "__main__":
    project = shoal.Project(sys.argv[1], name="script")
    runs = cube.map([{"x": i} for i in range(4)], backend="dask", project=project)
    workers = shoal.backends.shared("dask").client.run(os.getpid)
    print(json.dumps({
        "states": [r.state for r in runs],
        "cubes": [r.results.get("cube") for r in runs],
        "modules": sorted({r.results.get("module") for r in runs}),
        "run_pids": sorted({r.results.get("pid") for r in runs}),
        "worker_pids": sorted(workers.values()),
        "pid": os.getpid(),
    }))
    project.close()
'''


@pytest.fixture
def fn(tmp_path):
    return handler_functions(tmp_path)


def worker_pids(backend: DaskBackend) -> set[int]:
    return set(backend.client.run(os.getpid).values())


def local_cluster(n_workers: int):
    """A LocalCluster started by the test itself (quiet, no dashboard on a fixed port)."""
    import logging

    from distributed import LocalCluster

    return LocalCluster(
        n_workers=n_workers,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
        silence_logs=logging.ERROR,
    )


def accepting(backend: DaskBackend) -> int:
    return len([w for w in backend.workers() if w.state != "closing"])


# -- the embedded cluster -------------------------------------------------------------------------
def test_embedded_cluster_runs_tasks_and_closes_its_processes(fn, tmp_path):
    backend = shoal.backends.get("dask", n_workers=1)
    assert isinstance(backend, DaskBackend) and backend.remote is False
    with backend:
        started = []
        first = backend.submit(task(fn("square"), {"x": 4}, tmp_path), lambda uid, at: started.append(uid))
        outcome = first.result(60)
        assert outcome.state == "completed" and outcome.results["square"] == 16
        assert outcome.logs == "square of 4\n"
        assert outcome.results["pid"] != os.getpid()  # a worker process, not this one
        wait_for(lambda: started == [outcome.uid], what="start callback")

        futures = backend.submit_many([task(fn("square"), {"x": i}, tmp_path) for i in range(4)])
        done = list(backend.as_completed(futures, timeout=60))
        assert sorted(f.uid for f in done) == sorted(f.uid for f in futures)
        assert [f.result().results["square"] for f in futures] == [0, 1, 4, 9]

        [worker] = backend.workers()
        assert worker.slots == 1 and worker.state == "idle" and worker.running == ()
        pids = worker_pids(backend)

        marker = tmp_path / "started"
        running = backend.submit(task(fn("looper"), {"marker": str(marker)}, tmp_path))
        wait_for(marker.exists, what="looper start")
        wait_for(lambda: backend.workers()[0].running == (running.uid,), what="running in workers()")
        assert backend.workers()[0].state == "busy"
        never = tmp_path / "never"
        queued = backend.submit(task(fn("looper"), {"marker": str(never)}, tmp_path))
    # Closing dropped the queued task, stopped the running one (it comes back cancelled, with its
    # outcome) and ended the worker processes.
    assert running.result(30).state == "cancelled"
    with pytest.raises(cf.CancelledError):
        queued.result(30)
    assert not never.exists()
    wait_for(lambda: not any(alive(pid) for pid in pids), what="worker processes gone")
    with pytest.raises(shoal.BackendError, match="closed"):
        backend.submit(task(fn("square"), {"x": 1}, tmp_path))
    backend.close()  # idempotent


def test_runs_start_in_the_order_they_were_submitted(project, fn, tmp_path):
    """Runs submitted one by one, and the batches of a map, all wait on their function's code task
    and become ready together; they still start in the order they were sent."""
    log = tmp_path / "order.log"

    def started() -> list[int]:
        return [int(line) for line in log.read_text().split()]

    bystander = fn("bystander")
    with DaskBackend(n_workers=1) as backend:  # one worker thread: runs start one after another
        handles = [
            bystander.submit({"i": i, "log": str(log), "hold": 0}, backend=backend, project=project) for i in range(8)
        ]
        assert [h.result(120).state for h in handles] == ["completed"] * 8
        assert started() == list(range(8))

        log.unlink()
        items = [{"i": i, "log": str(log), "hold": 0} for i in range(12)]
        # The code task went when the last run ended: the map ships it again, and waits on it.
        runs = bystander.map(items, backend=backend, project=project, batch_size=3)
        assert [r.state for r in runs] == ["completed"] * 12
        assert started() == list(range(12))


def test_bad_options_of_the_embedded_cluster():
    with pytest.raises(shoal.BackendError, match="address or a cluster"):
        DaskBackend("tcp://127.0.0.1:8786", cluster=object())
    backend = DaskBackend(no_such_option=1)
    with pytest.raises(shoal.BackendError, match="did not start.*no_such_option"):
        backend.start()
    backend.close()
    with pytest.raises(shoal.BackendError):
        DaskBackend().adapt(2, 1)
    with pytest.raises(shoal.BackendError):
        DaskBackend().scale(-1)


# -- an existing scheduler and a cluster object ---------------------------------------------------
def test_existing_scheduler_by_address(project, fn):
    with local_cluster(n_workers=1) as cluster:
        address = cluster.scheduler_address  # tcp://127.0.0.1:port
        for backend in (shoal.backends.get("dask://" + address.split("://", 1)[1]), DaskBackend(address)):
            with backend:
                assert backend.remote is True
                run = fn("square").run({"x": 3}, backend=backend, project=project, watch=False)
                assert run.state == "completed" and run.results["square"] == 9 and run.backend == "dask"
                with pytest.raises(shoal.BackendError, match="scheduler address"):
                    backend.scale(2)
                backend.adapt(0, 4)  # a cluster known only by address is left as its operator made it
                assert len(backend.workers()) == 1
        # Closing the backends closed their clients, not the cluster they connected to.
        assert cluster.status.name == "running"
        assert len(cluster.scheduler_info["workers"]) == 1
        assert project.store.count_runs() == 2


def test_cluster_object_passed_in(project, fn):
    with local_cluster(n_workers=1) as cluster:
        with DaskBackend(cluster=cluster) as backend:
            assert backend.cluster is cluster
            run = fn("square").run({"x": 5}, backend=backend, project=project, watch=False)
            assert run.state == "completed" and run.results["square"] == 25
            backend.scale(2)
            wait_for(lambda: accepting(backend) == 2, what="two workers")
            assert backend.slots == 2
            backend.scale(1)
            assert accepting(backend) == 1  # scale() waits until Dask retired the extra worker
            events = [(e.direction, e.workers_before, e.workers_after) for e in backend.scaling_events()]
            assert events == [("up", 1, 2), ("down", 2, 1)]
        assert cluster.status.name == "running"  # the user's cluster outlives the backend


# -- autoscaling ----------------------------------------------------------------------------------
def peak_membership(backend: DaskBackend) -> int:
    """The most workers the scheduler ever had at once, replayed from its own log of every worker
    that joined or left (nothing sampled, so no short peak is missed)."""
    now = peak = 0
    for _, event in backend.client.get_events("all"):
        action = event.get("action") if isinstance(event, dict) else None
        now += {"add-worker": 1, "remove-worker": -1}.get(action, 0)
        peak = max(peak, now)
    return peak


def test_adaptive_scales_up_under_backlog_and_back_to_zero(project, fn, tmp_path):
    release = tmp_path / "release"
    backend = DaskBackend(adapt_interval=0.1, adapt_wait_count=3, adapt_target_duration=0.5)
    try:
        backend.adapt(0, 2)
        assert backend.workers() == []  # it starts at the lower bound
        gated = fn("gated", replicas=(0, 2))
        handles = [gated.submit({"release": str(release)}, backend=backend, project=project) for _ in range(6)]
        # The runs hold their workers until released, so the backlog lasts until Adaptive has
        # scaled up, however long the workers take to start.
        wait_for(lambda: len([w for w in backend.workers() if w.running]) == 2, timeout=120, what="two busy workers")
        release.write_text("go")
        runs = [handle.result(120) for handle in handles]
        assert all(r.state == "completed" and r.results["released"] for r in runs), [r.error for r in runs]
        assert len({r.results["pid"] for r in runs}) == 2  # both workers took runs
        assert peak_membership(backend) == 2  # up to the maximum under backlog, never beyond
        wait_for(lambda: backend.workers() == [], timeout=120, what="scale down to zero")
        events = backend.scaling_events()
        assert any(e.direction == "up" for e in events) and any(e.direction == "down" for e in events)
        assert all(e.workers_after <= 2 for e in events if e.direction == "up")
    finally:
        backend.close()


# -- requirements ---------------------------------------------------------------------------------
def test_install_requirements_registers_pip_install(project, fn, monkeypatch):
    # pip must not reach any index here: satisfied requirements need none, a missing one fails locally.
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    with shoal.backends.get("dask", n_workers=1, install_requirements=True) as backend:
        client = backend.client
        first = fn("square", requirements=["numpy"]).run({"x": 2}, backend=backend, project=project, watch=False)
        assert first.state == "completed", first.error
        second = fn("square", requirements=["numpy", "packaging"]).run({"x": 3}, backend=backend, project=project, watch=False)
        assert second.state == "completed", second.error

        scheduler_plugins = client.run_on_scheduler(lambda dask_scheduler: sorted(dask_scheduler.plugins))
        # One plugin per requirement set: Dask skips a name it already has, so a shared name would
        # never install the second function's packages.
        assert requirements_plugin_name(("numpy",)) in scheduler_plugins
        assert requirements_plugin_name(("numpy", "packaging")) in scheduler_plugins
        per_worker = client.run(lambda dask_worker: sorted(dask_worker.plugins))
        assert all(sum(name.startswith("PipInstall") for name in names) == 2 for names in per_worker.values())

        with pytest.raises(shoal.BackendError, match="surely-not-a-package-xyz"):
            fn("square", requirements=["surely-not-a-package-xyz"]).run({"x": 1}, backend=backend, project=project)
        assert project.store.count_runs() == 2  # nothing recorded for the refused run


# -- the embedded cluster of another process ------------------------------------------------------
def test_main_script_on_its_own_embedded_cluster(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(MAIN_SCRIPT)
    folder = tmp_path / "project"
    folder.mkdir()
    done = subprocess.run([sys.executable, str(script), str(folder)], cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["states"] == ["completed"] * 4
    assert report["cubes"] == [0, 1, 8, 27]
    # The handler came from the script: by value or rebuilt from its text (never by re-importing it).
    assert len(report["modules"]) == 1
    assert report["modules"][0] == "__main__" or report["modules"][0].startswith("shoal_code_")
    assert report["pid"] not in report["run_pids"] and set(report["run_pids"]) <= set(report["worker_pids"])
    # The process closed its embedded cluster at exit: none of its workers outlived it.
    wait_for(lambda: not any(alive(pid) for pid in report["worker_pids"]), what="worker processes gone")
