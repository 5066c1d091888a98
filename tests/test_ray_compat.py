"""What shoal relies on in Ray beyond its stable public API (``shoal.backends.ray._compat``), and in
its public APIs where the behaviour matters (``ObjectRef.future()``: which thread runs a done callback,
what Ray's errors are instances of), pinned on the session's real local Ray instance: a Ray upgrade
that changes one of them fails the test named for it.

Also here: finding and stopping Ray's processes by their marker with psutil
(``shoal.backends.ray.processes``), which needs no Ray.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import queue
import subprocess
import sys
import threading
import uuid

import pytest

from helpers import alive, kill_by_pid, wait_for

from shoal.backends.ray.processes import MARKER, cluster_pids, stop_processes
from shoal.errors import WorkerLostError


def _blocked_until_written(path: str) -> str:
    """A task that holds its CPU until the test writes to the named pipe ``path``."""
    with open(path) as pipe:
        return pipe.read()


def _remote(ray, function, **options):
    """``function`` as a Ray task, shipped by value (workers cannot import this test module)."""
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    return ray.remote(num_cpus=1, max_retries=0, **options)(function)


@pytest.fixture
def ray(ray_backend):
    ray = pytest.importorskip("ray")
    ray_backend.start()
    return ray


# -- ray._private.state ------------------------------------------------------------------------------
def test_free_resources_per_node_are_keyed_by_node_id_and_drop_while_a_task_runs(ray, tmp_path):
    from shoal.backends.ray._compat import available_resources_per_node

    totals = {node["NodeID"]: node["Resources"]["CPU"] for node in ray.nodes() if node["Alive"]}
    free = available_resources_per_node()
    assert set(free) == set(totals)
    assert all(0 <= free[node]["CPU"] <= totals[node] for node in free if "CPU" in free[node])

    go = tmp_path / "go"
    os.mkfifo(go)
    ref = _remote(ray, _blocked_until_written).remote(str(go))
    (node,) = totals  # the session's instance is one node of 2 CPUs
    wait_for(lambda: available_resources_per_node()[node].get("CPU", 0) <= totals[node] - 1, what="a CPU in use")
    with open(go, "w") as pipe:
        pipe.write("go")
    assert ray.get(ref, timeout=60) == "go"


# -- ObjectRef.future() ------------------------------------------------------------------------------
def test_a_done_callback_runs_on_rays_thread_or_at_once_when_already_done(ray, tmp_path):
    go = tmp_path / "go"
    os.mkfifo(go)
    future = _remote(ray, _blocked_until_written).remote(str(go)).future()
    seen: queue.Queue = queue.Queue()
    future.add_done_callback(lambda done: seen.put((threading.current_thread(), done.result())))
    with open(go, "w") as pipe:  # opens once the task reads: the callback is in place before it ends
        pipe.write("go")
    thread, value = seen.get(timeout=60)
    assert value == "go"
    assert thread is not threading.current_thread()  # Ray's callback thread, as RayFuture's docs say

    later: list = []
    future.add_done_callback(lambda done: later.append(threading.current_thread()))
    assert later == [threading.current_thread()]  # already done: called at once, on the caller's thread


def _double(x: int) -> int:
    return 2 * x


# -- RemoteFunction._decorator -----------------------------------------------------------------------
def test_a_direct_remote_keeps_rays_invocation_and_submits_through_it(ray):
    """``_compat.DirectRemote``: Ray hands each ``.remote()``'s inner ``invocation`` to the remote
    function's ``_decorator`` hook; it is kept from the first call and called for later ones."""
    import ray.cloudpickle

    from shoal.backends.ray._compat import DirectRemote

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    direct = DirectRemote(_double, {"num_cpus": 1, "max_retries": 0, "name": "shoal-test:double"})
    first = direct.remote(1)
    assert direct._invocation is not None, "Ray no longer calls RemoteFunction._decorator(invocation)"
    later = [direct.remote(i) for i in range(2, 6)]
    assert ray.get([first, *later], timeout=120) == [2, 4, 6, 8, 10]


def test_a_task_error_is_an_instance_of_its_cause(ray):
    def fail() -> None:
        raise ValueError("no")

    error = _remote(ray, fail).remote().future().exception(timeout=120)
    assert isinstance(error, ray.exceptions.RayTaskError)
    assert isinstance(error, ValueError)


def test_a_cancelled_pending_task_is_task_cancelled_and_maps_to_cancelled(ray):
    from shoal.backends.ray.future import engine_error

    never = _remote(ray, _blocked_until_written, resources={"shoal-test-never": 1}).remote("/nonexistent")
    future = never.future()
    ray.cancel(never)
    error = future.exception(timeout=120)
    assert isinstance(error, ray.exceptions.TaskCancelledError)
    assert isinstance(engine_error(error), cf.CancelledError)


def test_a_crashed_worker_is_worker_crashed_and_maps_to_worker_lost(ray):
    from shoal.backends.ray.future import _LOST, engine_error

    assert all(hasattr(ray.exceptions, name) for name in _LOST)  # the names RayFuture matches by

    def crash() -> None:
        os._exit(3)

    error = _remote(ray, crash).remote().future().exception(timeout=120)
    assert isinstance(error, ray.exceptions.WorkerCrashedError)
    assert isinstance(engine_error(error), WorkerLostError)


# -- internal names: the GCS probe, ray.init's temp folder -------------------------------------------
def test_a_heads_gcs_answers_the_probe_method(ray, ray_backend):
    from shoal.backends.ray.connect import probe

    assert probe(ray_backend._gcs_address, 30) == "gcs"


def test_the_temp_dir_option_puts_the_session_under_the_backends_folder(ray, ray_backend):
    # RayBackend(num_cpus=2) started it with temp_dir_option(its folder); ray.init takes the option
    # through **kwargs, so only its effect can be checked
    assert any(entry.startswith("session_") for entry in os.listdir(ray_backend._temp_dir))


# -- processes by marker (psutil) --------------------------------------------------------------------
def test_marked_processes_and_their_children_are_found_and_stopped(tmp_path):
    token = uuid.uuid4().hex
    ready = tmp_path / "child-started"
    script = (
        "import os, subprocess, sys\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import signal; signal.pause()'], env={})\n"
        f"open({str(ready)!r} + '.tmp', 'w').write(str(child.pid))\n"
        f"os.replace({str(ready)!r} + '.tmp', {str(ready)!r})\n"
        "child.wait()\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, MARKER: token})
    try:
        wait_for(ready.exists, what="the unmarked child started")
        child = int(ready.read_text())
        assert cluster_pids(token) == sorted([parent.pid, child])  # the child has no marker: found as a descendant
        assert parent.pid not in cluster_pids(uuid.uuid4().hex)
        stop_processes([parent.pid, child], grace=5)
        parent.wait(10)
        wait_for(lambda: not alive(child), what="the child stopped")
        assert cluster_pids(token) == []
    finally:
        kill_by_pid([parent.pid])


def test_rays_token_loader_answers_as_the_auth_probe_expects():
    from shoal.backends.ray._compat import CLIENT_AUTH_PROBE_METHOD, raylet

    loader = raylet().AuthenticationTokenLoader.instance()
    assert isinstance(loader.has_token(ignore_auth_mode=True), bool)
    headers = loader.get_token_for_http_header(ignore_auth_mode=True)
    assert isinstance(headers, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items())
    assert callable(raylet().Config.initialize)
    assert CLIENT_AUTH_PROBE_METHOD.startswith("/ray.rpc.")
