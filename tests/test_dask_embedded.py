"""The embedded Dask cluster's processes are programs of their own: a script without a
``if __name__ == "__main__":`` guard runs on it unchanged (its top level runs once, in the driver),
its processes get the backend's Dask config, a failed start names its cause, and a driver killed
with SIGKILL or SIGTERM leaves none of the cluster's processes behind (the watchdog).

Scripts run as subprocesses; every process they report is polled by PID and killed by PID in a
``finally`` if it outlived the test.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import psutil
import pytest

import shoal
from shoal.backends.dask import DaskBackend

from helpers import alive, kill_by_pid, wait_for

# Reports the cluster's processes as Dask itself sees them (scheduler, workers, their Nannies), the
# ones carrying the cluster's marker, the watchdog, and what each process runs as its __main__.
REPORT = """
import os as _os, sys as _sys, json as _json
import shoal.backends as _backends
_backend = _backends.shared("dask")
_client = _backend.client
def _main_file():
    import sys
    return getattr(sys.modules.get("__main__"), "__file__", None)
_report = {
    "driver": _os.getpid(),
    "scheduler": [_client.run_on_scheduler(_os.getpid)],
    "workers": sorted(_client.run(_os.getpid).values()),
    "nannies": sorted(_client.run(_os.getppid).values()),
    "marked": _backend.cluster.pids(),
    "watchdog": [_backend.cluster.watchdog_pid],
    "folder": _backend.cluster.root,
    "mains": sorted({str(m) for m in _client.run(_main_file).values()} | {str(_client.run_on_scheduler(_main_file))}),
}
import psutil as _psutil
_report["children"] = [" ".join(c.cmdline()) for c in _psutil.Process().children()]  # direct ones
"""

UNGUARDED = '''
import json, os, sys
import shoal

print("top level of the script")


@shoal.function
def cube(x: int):
    return {"cube": x ** 3, "pid": os.getpid()}


project = shoal.Project(os.environ["PROJECT"], name="unguarded")
runs = cube.map([{"x": i} for i in range(6)], backend="dask", project=project)
''' + REPORT + '''
_report["states"] = [r.state for r in runs]
_report["cubes"] = [r.results.get("cube") for r in runs]
_report["run_pids"] = sorted({r.results.get("pid") for r in runs})
print("REPORT " + json.dumps(_report))
project.close()
'''

# Starts the cluster, reports its processes, then runs a map whose handler writes a marker and waits.
KILLED = '''
import json, os, time
import shoal

@shoal.function
def hold(marker: str):
    open(marker, "w").close()
    time.sleep(600)

project = shoal.Project(os.environ["PROJECT"], name="killed")
''' + REPORT + '''
with open(os.environ["PIDS"], "w") as out:
    json.dump(_report, out)
hold.map([{"marker": os.environ["MARKER"]}] * 2, backend="dask", project=project)
'''


def cluster_pids(report: dict) -> list[int]:
    return sorted({pid for key in ("scheduler", "workers", "nannies", "marked", "watchdog") for pid in report[key]})


def run_script(tmp_path, text: str, how: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PROJECT": str(tmp_path / "project")}
    if how == "file":
        script = tmp_path / "script.py"
        script.write_text(text)
        command = [sys.executable, str(script)]
    else:
        command = [sys.executable, "-c", text]
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = process.communicate(timeout=240)
    finally:
        kill_by_pid([process.pid])
    return subprocess.CompletedProcess(command, process.returncode, out, err)


@pytest.mark.parametrize("how", ["file", "-c"])
def test_unguarded_script_runs_once_on_the_embedded_cluster(tmp_path, how):
    done = run_script(tmp_path, UNGUARDED, how)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("top level of the script") == 1, done.stdout
    assert "bootstrapping phase" not in done.stderr and "Nanny failed" not in done.stderr, done.stderr[-3000:]
    [line] = [line for line in done.stdout.splitlines() if line.startswith("REPORT ")]
    report = json.loads(line[len("REPORT "):])
    assert report["states"] == ["completed"] * 6 and report["cubes"] == [x**3 for x in range(6)]
    assert set(report["run_pids"]) <= set(report["workers"])
    # Neither the scheduler nor any worker or Nanny is the driver or runs the user's script.
    driver = report["driver"]
    assert driver not in report["scheduler"] + report["workers"] + report["nannies"]
    assert not any("script.py" in main for main in report["mains"]), report["mains"]
    assert report["children"] and not any("multiprocessing" in command for command in report["children"]), report["children"]
    assert set(report["scheduler"] + report["workers"] + report["nannies"]) <= set(report["marked"])
    # The script closed its cluster at exit: none of its processes outlived it.
    wait_for(lambda: not any(alive(pid) for pid in cluster_pids(report)), timeout=30, what="cluster processes gone")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killed_driver_leaves_no_cluster_process(tmp_path, sig):
    script = tmp_path / "script.py"
    script.write_text(KILLED)
    pids_file, marker = tmp_path / "pids.json", tmp_path / "running"
    env = {**os.environ, "PROJECT": str(tmp_path / "project"), "PIDS": str(pids_file), "MARKER": str(marker)}
    driver = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    report: dict = {}
    try:
        wait_for(lambda: marker.exists() or driver.poll() is not None, timeout=180, what="a running handler")
        assert driver.poll() is None, driver.stderr.read().decode()[-3000:]
        report = json.loads(pids_file.read_text())
        assert report["scheduler"] and report["workers"] and report["nannies"] and report["watchdog"]
        below = [child.pid for child in psutil.Process(driver.pid).children(recursive=True)]  # e.g. a resource tracker
        report["marked"] = sorted({*report["marked"], *below})
        os.kill(driver.pid, sig)
        driver.wait(30)
        # Bounded wait for the event (every process gone); the watchdog acts within a second or two.
        wait_for(lambda: not any(alive(pid) for pid in cluster_pids(report)), timeout=30, what="cluster processes gone")
        wait_for(lambda: not os.path.exists(report["folder"]), timeout=30, what="the cluster's folder removed")
    finally:
        kill_by_pid([driver.pid, *cluster_pids(report)] if report else [driver.pid])
        driver.stderr.close()


# -- what the processes run with -------------------------------------------------------------------
def test_embedded_processes_get_the_backends_config(dask_backend):
    def settings():
        import dask

        return (
            dask.config.get("distributed.worker.profile.enabled"),
            dask.config.get("distributed.admin.tick.interval"),
            dask.config.get("distributed.scheduler.allowed-failures"),
        )

    client = dask_backend.client
    assert set(client.run(settings).values()) == {(False, "500ms", 0)}
    assert client.run_on_scheduler(settings)[1:] == ("500ms", 0)
    assert client.run_on_scheduler(os.getpid) != os.getpid()  # the scheduler is not in this process
    # One thread per worker, and the memory limit "auto" resolved by each worker (a share of the machine).
    limits = client.run(lambda dask_worker: (dask_worker.state.nthreads, dask_worker.memory_manager.memory_limit))
    assert {threads for threads, _ in limits.values()} == {1}
    assert all(0 < limit <= psutil.virtual_memory().total for _, limit in limits.values())
    bound = client.run_on_scheduler(lambda dask_scheduler: [s.getsockname() for s in dask_scheduler.http_server._sockets.values()])
    assert [host for host, _ in bound] == ["127.0.0.1"] and bound[0][1] != 8787  # local, random port
    port = bound[0][1]
    assert urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10).read() == b"ok"
    with pytest.raises(urllib.error.HTTPError, match="404"):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=10)  # no dashboard


def test_failed_start_names_its_cause():
    backend = DaskBackend(n_workers=1, preload=["surely_no_such_module_xyz"])
    with pytest.raises(shoal.BackendError, match="did not start.*surely_no_such_module_xyz"):
        backend.start()
    backend.close()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        backend = DaskBackend(n_workers=1, scheduler_port=port)
        with pytest.raises(shoal.BackendError, match=f"did not start: the dask scheduler on 127.0.0.1:{port} exited.*Address already in use"):
            backend.start()
        backend.close()
    backend = DaskBackend(n_workers=1, loop=object())
    with pytest.raises(shoal.BackendError, match="did not start.*'loop'.*cluster=<a distributed Cluster"):
        backend.start()
    backend.close()


def test_worker_options_reach_the_worker_processes():
    with DaskBackend(n_workers=1, threads_per_worker=2, memory_limit="1GiB", resources={"GPU": 1}) as backend:
        [info] = backend.client.run(
            lambda dask_worker: (dask_worker.state.nthreads, dask_worker.memory_manager.memory_limit, dask_worker.state.total_resources)
        ).values()
        pids = backend.cluster.pids()
    assert info == (2, 2**30, {"GPU": 1})
    wait_for(lambda: not any(alive(pid) for pid in pids), timeout=30, what="cluster processes gone")
