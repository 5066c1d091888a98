"""The ray backend on real local Ray: runs through ``fn.run``/``map``/``submit`` with everything
recorded, cancellation, a worker killed mid-run, unreachable addresses, requirements, the default
instance ignoring RAY_ADDRESS, close leaving no process, and autoscaling between replicas (0, 2) on a
local autoscaling cluster.

Ray allows one connection per process: in-process tests share the session's ``ray_backend`` (a fixed
instance of 2 CPUs); tests that need an instance of their own run a script in a child process.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")

import shoal  # noqa: E402
import shoal.backends  # noqa: E402
from shoal.backends.ray import RayBackend  # noqa: E402
from shoal.errors import BackendError  # noqa: E402

from handler_sources import HANDLERS, handler_functions, write_handlers  # noqa: E402
from helpers import alive, interrupt_map, interrupted_runs, task, wait_for  # noqa: E402


@pytest.fixture
def fn(tmp_path):
    """fn(handler, **options): a Function from a handlers file outside sys.path."""
    return handler_functions(tmp_path)


def run_script(source: str, tmp_path: Path, timeout: float = 150.0, env: dict | None = None) -> dict:
    """Run ``source`` in a child Python (its own Ray connection); it prints one JSON line last."""
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(source))
    child = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path)],
        cwd=tmp_path,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)  # the child and anything it started in its group
        out, err = child.communicate()
        raise AssertionError(f"script did not finish within {timeout} s\n{out[-3000:]}\n{err[-3000:]}") from None
    assert child.returncode == 0, f"script failed ({child.returncode})\n{out[-3000:]}\n{err[-3000:]}"
    return json.loads(out.strip().splitlines()[-1]) | {"stderr": err}


# -- runs through the session's instance ------------------------------------------------------------
def test_the_session_instance_is_fixed_size_and_local(ray_backend):
    assert ray_backend.name == "ray" and not ray_backend.remote and not ray_backend.in_process
    assert ray_backend.slots == 2
    workers = ray_backend.workers()
    assert sum(w.slots for w in workers) == 2
    assert ray_backend.address.startswith("ray://")
    assert ray_backend.pids(), "the instance's processes are known by PID"


def test_run_records_results_logs_metrics_and_artifacts(ray_backend, project, fn):
    run = fn("logs_everything").run({"n": 3}, backend=ray_backend, project=project, watch=False)
    assert run.state == "completed", run.error
    assert run.results["accuracy"] == 0.75 and run.results["pid"] != os.getpid()
    assert run.metrics == {"loss": [[0, 1.0], [1, 0.5], [2, 1.0 / 3]]}
    assert "through print" in run.logs
    assert run.backend == "ray" and run.attempts == 1 and run.started_at <= run.ended_at
    stored = project.runs.get(run.uid)
    assert stored == run
    assert stored.output("notes") == "written on the worker"


def test_map_submit_and_errors(ray_backend, project, fn):
    runs = fn("add").map([{"x": i} for i in range(6)], backend=ray_backend, project=project)
    assert [r.results["sum"] for r in runs] == [i + 1.0 for i in range(6)]
    assert all(r.state == "completed" and "adding" in r.logs for r in runs)

    handle = fn("add").submit({"x": 41}, backend=ray_backend, project=project)
    assert handle.result(60).results["sum"] == 42.0

    failed = fn("fails").run(backend=ray_backend, project=project, watch=False)
    assert failed.state == "failed" and failed.error["type"] == "ValueError"
    assert failed.error["message"] == "broken on purpose" and "Traceback" in failed.error["traceback"]
    assert failed.results == {"before": 1}


WAITS = """
import os, sys, time


def waits(release: str):
    print("waiting for the release", flush=True)
    print("on stderr too", file=sys.stderr)
    while not os.path.exists(release):
        time.sleep(0.05)
    print("released")
"""


def test_watched_runs_echo_their_output_live_on_the_driver(ray_backend, project, tmp_path, capsys):
    """As on the embedded Dask cluster: a watched run's output shows on the driver while it runs
    (Ray's workers write to files; shoal forwards only watched runs' output, through a pipe)."""
    waits = shoal.Function.from_file(write_file(tmp_path / "waits.py", WAITS), "waits")
    release = tmp_path / "release"
    handle = waits.submit({"release": str(release)}, backend=ray_backend, project=project, watch=True)
    seen = {"out": "", "err": ""}

    def shown(text: str) -> bool:
        captured = capsys.readouterr()
        seen["out"] += captured.out
        seen["err"] += captured.err
        return text in seen["out"]

    try:  # stdout and stderr travel apart: wait for both
        wait_for(
            lambda: shown("waiting for the release") and "on stderr too" in seen["err"],
            timeout=60,
            what="the handler's stdout and stderr on the driver",
        )
        assert handle.state == "running"
    finally:
        release.write_text("go")  # a failed assertion must not leave the run holding a CPU of the session's Ray
    run = handle.result(60)
    assert run.state == "completed" and "released" in seen["out"] + capsys.readouterr().out  # shown before it ends
    assert "waiting for the release" in run.logs  # and recorded, as always
    quiet = waits.run({"release": str(release)}, backend=ray_backend, project=project, watch=False)
    assert quiet.state == "completed" and "released" in quiet.logs
    assert "released" not in capsys.readouterr().out


def write_file(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


MEET = """
import os
import time


def meet(folder: str, i: int) -> int:
    open(os.path.join(folder, f"started-{i}"), "w").close()
    deadline = time.monotonic() + 60  # bounded: one slot alone passes after a minute (and the test fails)
    while len(os.listdir(folder)) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    return os.getpid()
"""


def test_outcomes_come_with_the_end_line_or_from_ray_when_too_large_for_it(ray_backend, project, fn):
    """A task's end line into the start pipe carries its outcome when it fits one atomic pipe write
    (``shoal.backends.ray.ends``); a larger outcome is fetched from Ray. Both settle their runs."""
    small, large = fn("chatty").map([{"lines": 1}, {"lines": 200}], backend=ray_backend, project=project)
    assert small.state == large.state == "completed", (small.error, large.error)
    assert small.logs.endswith("THE LAST LINE\n") and large.logs.endswith("THE LAST LINE\n")
    assert len(large.logs) > 16_000  # far over a pipe line (4,096 bytes)


def test_a_task_that_ends_without_its_end_line_still_settles(ray_backend, project, fn, tmp_path):
    """A task cancelled before it ran writes no end line (``shoal.backends.ray.ends``): cancelling
    attaches Ray's callback, which settles it (a run pending while both workers are busy). A lost
    worker's task, which writes none either, is ``test_worker_killed_mid_run``'s."""
    release = tmp_path / "release"
    handles = [
        fn("gated").submit({"release": str(release), "limit": 60}, backend=ray_backend, project=project)
        for _ in range(3)
    ]
    pending = fn("add").submit({"x": 1}, backend=ray_backend, project=project)
    assert pending.cancel() is True
    run = pending.result(60)
    assert run.state == "cancelled", run.error
    release.touch()
    assert all(handle.result(90).state == "completed" for handle in handles)


def test_map_of_many_runs_uses_both_slots(ray_backend, project, tmp_path):
    """Each run waits until two have started: on a busy machine, a second worker process slow to
    start cannot leave the whole map to the first."""
    meet = shoal.Function.from_file(write_file(tmp_path / "meet.py", MEET), "meet")
    (tmp_path / "started").mkdir()
    runs = meet.map([{"folder": str(tmp_path / "started"), "i": i} for i in range(8)], backend=ray_backend, project=project)
    assert all(r.state == "completed" for r in runs)
    assert len({r.results["return"] for r in runs}) >= 2  # two worker processes shared the work


def test_large_code_travels_once_through_the_object_store(ray_backend, project, tmp_path):
    from shoal.backends.ray import INLINE_CODE

    path = tmp_path / "big.py"
    path.write_text(f"# {'x' * INLINE_CODE}\n" + HANDLERS)  # too large to ship inside every task
    big = shoal.Function.from_file(path, "add")
    runs = big.map([{"x": i} for i in range(4)], backend=ray_backend, project=project)
    assert [r.results["sum"] for r in runs] == [1.0, 2.0, 3.0, 4.0]
    assert big.hash in ray_backend._code_refs  # put once, referenced by every task


# -- cancellation -----------------------------------------------------------------------------------
def test_small_code_travels_with_the_remote_function(ray_backend, project, fn):
    """A function's code rides in its remote function (``worker.carrying``), exported by Ray once
    per worker: each task ships without it."""
    adder = fn("add")
    runs = adder.map([{"x": i} for i in range(4)], backend=ray_backend, project=project)
    assert [r.results["sum"] for r in runs] == [1.0, 2.0, 3.0, 4.0]
    carried = [key for key in ray_backend._remotes if key[-1] == adder.hash]
    assert carried, ray_backend._remotes.keys()  # one remote function for this code version
    assert adder.hash not in ray_backend._code_refs  # small code: not through the object store


def test_cancel_pending_and_running(ray_backend, project, fn, tmp_path):
    looper = fn("looper")
    markers = [tmp_path / f"started-{i}" for i in range(ray_backend.slots)]
    running = [looper.submit({"marker": str(m)}, backend=ray_backend, project=project) for m in markers]
    for marker in markers:
        wait_for(marker.exists, what=marker.name)
    wait_for(lambda: all(h.state == "running" for h in running), what="running state")  # start reports
    busy = {uid for worker in ray_backend.workers() for uid in worker.running}
    assert {h.uid for h in running} <= busy

    never = tmp_path / "never"
    pending = looper.submit({"marker": str(never)}, backend=ray_backend, project=project)
    assert pending.cancel() is True
    assert all(h.cancel() is True for h in running)

    cancelled = pending.result(60)
    assert cancelled.state == "cancelled" and cancelled.started_at is None and cancelled.attempts == 0
    for handle in running:
        run = handle.result(60)
        assert run.state == "cancelled" and run.error["type"] == "CancelledError", run.error
        # The marker is written after the first metric: what the run logged before it was stopped is kept.
        assert run.started_at is not None and 1 <= len(run.metrics.get("step", ())) < 3000, (run.error, run.attempts)
    assert not never.exists()


def test_cancel_repeated_while_a_run_ends_keeps_its_outcome(fn, tmp_path):
    """Ray interrupts a cancelled task's main thread, and again every ``cancellation_retry_ms``
    while it runs: on a busy machine a repeat landed after the handler had stopped, as the outcome
    was made, and the outcome (with the metrics logged) was lost. The task runs here in this
    process's main thread, as in a Ray worker, interrupted the way Ray does it, without pause."""
    import _thread

    from shoal.backends.ray.worker import returned_outcome, run_on_worker
    from shoal.backends.task_codec import encode

    marker = tmp_path / "started"
    attempt = task(fn("looper"), {"marker": str(marker)}, tmp_path)
    finished = threading.Event()
    late: list[int] = []  # interrupts that came after the task returned (this handler is back then)

    def interrupt() -> None:
        wait_for(marker.exists, what="looper start")
        while not finished.is_set():
            _thread.interrupt_main()
            finished.wait(0.001)  # pacing the repeats, not waiting for anything

    previous = signal.signal(signal.SIGINT, lambda signum, frame: late.append(signum))
    interrupter = threading.Thread(target=interrupt, daemon=True)
    try:
        interrupter.start()
        outcome = returned_outcome(run_on_worker(encode((attempt, None, None, None))))
    finally:
        finished.set()
        interrupter.join(30)
        signal.signal(signal.SIGINT, previous)
    assert outcome.state == "cancelled" and outcome.error["type"] == "CancelledError", outcome.error
    assert 1 <= len(outcome.metrics["step"]) < 3000


def test_a_run_that_ignores_the_interrupt_is_stopped_by_killing_its_worker(ray_backend, project, fn, tmp_path):
    marker = tmp_path / "stubborn"
    handle = fn("stubborn").submit({"marker": str(marker)}, backend=ray_backend, project=project)
    wait_for(marker.exists, what="stubborn start")
    pid = int(marker.read_text())
    assert handle.cancel() is True
    run = handle.result(60)
    assert run.state == "cancelled" and "worker was killed" in run.error["message"]
    wait_for(lambda: not alive(pid), what="the stubborn worker's end")


# -- faults -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("retries", [0, 1])
def test_worker_killed_mid_run(ray_backend, project, fn, tmp_path, retries):
    pidfile = tmp_path / "victim.pid"
    victim = fn("victim", retries=retries).submit({"pidfile": str(pidfile)}, backend=ray_backend, project=project)
    bystander = fn("nap").submit({"seconds": 1.0}, backend=ray_backend, project=project)
    wait_for(lambda: pidfile.exists() and pidfile.read_text(), what="the victim's pid")
    os.kill(int(pidfile.read_text()), signal.SIGKILL)

    run = victim.result(90)
    if retries:
        assert run.state == "completed" and run.results["attempt"] == 2 and run.attempts == 2
    else:
        assert run.state == "failed" and run.error["type"] == "WorkerLostError"
        assert "worker lost" in run.error["message"]
    other = bystander.result(60)
    assert other.state == "completed" and other.attempts == 1  # neither lost nor repeated
    project.flush()
    assert project.store.count_runs(function="victim") == 1 and project.store.count_runs(function="nap") == 1


def test_a_batch_whose_worker_dies_loses_no_run(ray_backend, project, fn, tmp_path):
    marker = tmp_path / "died"
    items = [{"i": i, "die_on": 3, "marker": str(marker)} for i in range(24)]
    runs = fn("dies_once", retries=1).map(items, backend=ray_backend, project=project, batch_size=6)
    assert marker.exists()  # a worker really died mid-batch
    assert [r.state for r in runs] == ["completed"] * 24, [(r.iteration, r.error) for r in runs if r.state != "completed"]
    assert [r.results["i"] for r in runs] == list(range(24))
    assert project.store.count_runs(parent=runs[0].parent) == 24


def test_unreachable_address_is_a_quick_backend_error():
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(BackendError, match="cannot reach a Ray cluster"):
        shoal.backends.get(f"ray://127.0.0.1:{closed}", connect_timeout=3).start()
    assert time.monotonic() - started < 15


def test_a_port_that_is_not_ray_is_a_quick_backend_error():
    with socket.socket() as mute:  # accepts connections, never speaks gRPC
        mute.bind(("127.0.0.1", 0))
        mute.listen()
        started = time.monotonic()
        with pytest.raises(BackendError):
            RayBackend(address=f"127.0.0.1:{mute.getsockname()[1]}", connect_timeout=2).start()
    assert time.monotonic() - started < 15


def test_address_auto_without_a_cluster_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))  # no ray_current_cluster there
    with pytest.raises(BackendError, match="found no Ray cluster"):
        RayBackend(address="auto").start()


def test_one_ray_connection_per_process(ray_backend):
    with pytest.raises(BackendError, match="one connection per process"):
        RayBackend(num_cpus=1).start()


# -- requirements -----------------------------------------------------------------------------------
def test_missing_requirements_fail_before_the_run(ray_backend, project, fn):
    needy = fn("add", requirements=["shoal-surely-not-installed-package>=1"])
    with pytest.raises(BackendError, match="shoal-surely-not-installed-package"):
        needy.run({"x": 1}, backend=ray_backend, project=project, watch=False)
    assert project.runs.list(function=needy.name) == []


INSTALLS = '''
import json, os, sys
import shoal, shoal.backends

folder = sys.argv[1]
project = shoal.Project(folder, name="installs")
fn = shoal.Function.from_file(os.path.join(folder, "needs.py"), "commas", requirements=["humanize>=4"])
with shoal.backends.get("ray", num_cpus=1, install_requirements=True) as backend:
    run = fn.run({"n": 1234567}, backend=backend, project=project, watch=False)
project.close()
print(json.dumps({"state": run.state, "results": run.results, "error": run.error}))
'''


def test_install_requirements_installs_them_with_the_runtime_env(tmp_path):
    import importlib.util

    assert importlib.util.find_spec("humanize") is None, "the test needs a package this environment lacks"
    code = "def commas(n: int):\n    import humanize\n    return {'text': humanize.intcomma(n)}\n"
    (tmp_path / "needs.py").write_text(code)
    out = run_script(INSTALLS, tmp_path, timeout=240)  # Ray makes a virtualenv and pip-installs into it
    assert out["state"] == "completed", out["error"]
    assert out["results"] == {"text": "1,234,567"}


# -- an instance of its own, in a child process -------------------------------------------------------
OWN_INSTANCE = '''
import json, os, sys, time
import shoal, shoal.backends

folder = sys.argv[1]
project = shoal.Project(folder, name="own")
fn = shoal.Function.from_file(os.path.join(folder, "handlers.py"), "add")
started = time.monotonic()
backend = shoal.backends.get("ray", num_cpus=1)
nap = shoal.Function.from_file(os.path.join(folder, "handlers.py"), "nap")
with backend:
    run = fn.run({"x": 1}, backend=backend, project=project, watch=False)
    init_s = time.monotonic() - started
    pids = backend.pids()
    address = backend.address
    unfinished = nap.submit({"seconds": 60}, backend=backend, project=project)
left_behind = unfinished.result(30)  # closing does not leave it waiting forever
events = [(e.direction, e.workers_before, e.workers_after) for e in backend.scaling_events()]
project.close()
print(json.dumps({"state": run.state, "sum": run.results.get("sum"), "pids": pids, "address": address,
                  "left": [p for p in pids if os.path.exists(f"/proc/{p}")], "init_s": init_s, "events": events,
                  "unfinished": left_behind.state}))
'''


def test_own_instance_ignores_ray_address_and_close_leaves_no_process(tmp_path):
    write_handlers(tmp_path)
    # A bare ray.init() would try to join this dead address; the default instance must not.
    out = run_script(OWN_INSTANCE, tmp_path, env={"RAY_ADDRESS": "127.0.0.1:1"})
    assert out["state"] == "completed" and out["sum"] == 2.0
    assert out["address"] != "ray://127.0.0.1:1" and out["pids"]
    still = [pid for pid in out["left"] if alive(pid)]
    assert still == [], f"processes left after close: {still}"
    assert out["events"] == [["up", 0, 1], ["down", 1, 0]]
    assert out["unfinished"] == "cancelled"
    assert "Started a local Ray instance" not in out["stderr"]  # quiet by default


AUTOSCALING = '''
import json, os, sys, threading
import shoal, shoal.backends
from shoal.testing import wait_for

folder = sys.argv[1]
project = shoal.Project(folder, name="elastic")
fn = shoal.Function.from_file(os.path.join(folder, "handlers.py"), "gated", replicas=(0, 2))
release = os.path.join(folder, "release")
backend = shoal.backends.shared("ray")
runs = []
mapping = threading.Thread(target=lambda: runs.extend(fn.map([{"release": release}] * 6, backend="ray", project=project)))
mapping.start()
# The runs hold their workers until released: the backlog lasts until the autoscaler has added
# both workers, however long they take to start.
wait_for(lambda: sum(1 for w in backend.workers() if w.state == "busy") == 2, timeout=150, what="two busy workers")
peak = len(backend.workers())
pids = set(backend.pids())  # the worker nodes' processes too, while they exist
open(release, "w").close()
mapping.join(120)

def scaled_down():
    events = backend.scaling_events()
    return not backend.workers() and events and events[-1].workers_after == 0

wait_for(scaled_down, timeout=120, what="scale down to zero")
idle = len(backend.workers())
events = [(e.direction, e.workers_before, e.workers_after, e.reason) for e in backend.scaling_events()]
pids = sorted(pids | set(backend.pids()))
slots = backend.slots
shoal.backends.close_shared()
project.flush()
stored = [(e.direction, e.reason) for e in project.store.list_scaling_events(limit=None)]
project.close()
print(json.dumps({"states": sorted({r.state for r in runs}), "n": len(runs), "peak": peak,
                  "idle": idle, "events": events, "slots": slots, "pids": pids,
                  "workers_pids": sorted({r.results.get("pid") for r in runs}), "stored": stored,
                  "left": [p for p in pids if os.path.exists(f"/proc/{p}")]}))
'''


def test_autoscaling_between_0_and_2_workers(tmp_path):
    write_handlers(tmp_path)
    out = run_script(AUTOSCALING, tmp_path, timeout=420)  # a safety net: the script waits on events
    assert out["n"] == 6 and out["states"] == ["completed"]
    assert out["slots"] == 2
    assert out["peak"] == 2, f"more than 2 workers: {out}"  # two were busy at once: the maximum
    assert out["idle"] == 0, "the idle workers were not removed"
    ups = [e for e in out["events"] if e[0] == "up"]
    downs = [e for e in out["events"] if e[0] == "down"]
    assert ups and downs and max(e[2] for e in ups) == 2 and downs[-1][2] == 0, out["events"]
    assert all(e[3].startswith("ray autoscaler:") for e in ups + downs)
    assert any(reason.startswith("ray autoscaler:") for _, reason in out["stored"])  # in the project's records
    still = [pid for pid in out["left"] if alive(pid)]
    assert still == [], f"processes left after close: {still}"


FAILED_START = """
import json
import shoal.backends
from shoal.errors import BackendError

try:
    shoal.backends.get("ray", num_cpus=1, surely_not_a_ray_option=1).start()
    error = None
except BackendError as exc:
    error = str(exc)
print(json.dumps({"error": error}))
"""


def test_a_start_that_fails_is_a_backend_error_not_a_hang(tmp_path):
    """Stopping what a failed start began takes the same lock the start holds (a hang, seen when
    Ray could not start on a busy machine); it must end in the error instead."""
    out = run_script(FAILED_START, tmp_path)
    assert out["error"] and out["error"].startswith("could not start a local ray instance"), out


JOIN = '''
import json, os, sys
import shoal, shoal.backends
from shoal.errors import BackendError

folder, addresses = sys.argv[1], json.loads(os.environ["JOIN_ADDRESSES"])
project = shoal.Project(folder, name="join")
fn = shoal.Function.from_file(os.path.join(folder, "handlers.py"), "add")
needy = shoal.Function.from_file(
    os.path.join(folder, "handlers.py"), "add", requirements=["shoal-surely-not-installed-package"]
)
out = {}
for address in addresses:
    with shoal.backends.get(address) as backend:
        run = fn.run({"x": 2}, backend=backend, project=project, watch=False)
        try:
            needy.run({"x": 1}, backend=backend, project=project, watch=False)
            missing = None
        except BackendError as exc:
            missing = str(exc)
        out[address] = {"state": run.state, "sum": run.results.get("sum"), "remote": backend.remote,
                        "workers": len(backend.workers()), "missing": missing}
project.close()
print(json.dumps(out))
'''


def test_joining_a_cluster_by_client_or_gcs_address(tmp_path):
    from shoal.backends.ray.autoscaling import LocalAutoscalingCluster

    write_handlers(tmp_path)
    cluster = LocalAutoscalingCluster(1, 1)  # someone's running cluster: a head and one worker node
    try:
        cluster.start()
        addresses = [cluster.client_address, f"ray://{cluster.gcs_address}"]
        out = run_script(JOIN, tmp_path, env={"JOIN_ADDRESSES": json.dumps(addresses)})
        pids = cluster.pids()
    finally:
        cluster.stop()
    for address in addresses:
        joined = out[address]
        assert joined["state"] == "completed" and joined["sum"] == 3.0 and joined["remote"] is True
        assert joined["workers"] == 1
        assert "shoal-surely-not-installed-package" in joined["missing"]  # checked on a worker
    assert pids and not [pid for pid in pids if alive(pid)]


def test_ctrl_c_cancels_the_runs_and_leaves_no_process(tmp_path):
    folder = interrupt_map(tmp_path, "ray")
    parent, children = interrupted_runs(folder)
    assert parent.state == "cancelled"
    assert [r.state for r in children] == ["cancelled"] * 4, [(r.state, r.error) for r in children]
    assert children[0].started_at is not None  # the running one was stopped
    assert all(r.started_at is None and r.attempts == 0 for r in children[1:])  # never started


def test_ctrl_c_cancels_a_map_sent_in_batches(tmp_path):
    folder = interrupt_map(tmp_path, "ray", count=12, batch_size=4)
    parent, children = interrupted_runs(folder)
    assert parent.state == "cancelled"
    assert [r.state for r in children] == ["cancelled"] * 12, [(r.state, r.error) for r in children]
    assert children[0].started_at is not None  # the running one was stopped
    assert all(r.started_at is None and r.attempts == 0 for r in children[1:])  # the rest never started
