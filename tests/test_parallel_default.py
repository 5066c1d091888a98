"""A function that sets no replicas uses every slot of the backend it runs on (issue 12 point 2).

Each backend is the shared one a name resolves to (``backend="dask"``), started by a script of its
own (Ray allows one instance per process; the script's processes are its own). Concurrency is
measured with marker files, not time: every run marks its start, then waits (bounded) until as many
runs as the machine has cores have started, and reports how many were running then. (An explicit
``replicas=(1, 1)`` running one at a time is tested by the backends' own concurrency tests.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import shoal

HANDLER = '''
import os
import time


def mark(i: int, folder: str, expect: int):
    """Start, wait until ``expect`` runs started (at most 60 s), report how many run right now."""
    open(os.path.join(folder, f"{i}.start"), "w").close()
    count = lambda suffix: sum(name.endswith(suffix) for name in os.listdir(folder))
    deadline = time.monotonic() + 60
    while count(".start") < expect and time.monotonic() < deadline:
        time.sleep(0.01)
    running = count(".start") - count(".end")
    open(os.path.join(folder, f"{i}.end"), "w").close()
    return {"running": running}
'''

SCRIPT = '''
import json
import os
import sys

import shoal


def peak(fn, folder, runs, expect, backend, project):
    os.makedirs(folder)
    done = fn.map([{"i": i, "folder": folder, "expect": expect} for i in range(runs)], backend=backend, project=project)
    assert all(r.state == "completed" for r in done), [r.error for r in done]
    return max(r.results["running"] for r in done)


if __name__ == "__main__":
    root, backend = sys.argv[1], sys.argv[2]
    project = shoal.Project(root, name="parallel")
    unset = shoal.Function.from_file(os.path.join(root, "mark.py"), "mark")
    cores = os.cpu_count()
    out = {"cores": cores, "unset_replicas": unset.replicas}
    # One run more than there are cores: all but one start at once, never more.
    out["unset"] = peak(unset, os.path.join(root, "unset"), cores + 1, cores, backend, project)
    out["slots"] = shoal.backends.shared(backend).slots
    print("RESULT " + json.dumps(out))
'''


def run_script(tmp_path, backend: str) -> dict:
    (tmp_path / "mark.py").write_text(HANDLER)
    (tmp_path / "script.py").write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SHOAL_", "RAY_ADDRESS"))}
    proc = subprocess.Popen(
        [sys.executable, str(tmp_path / "script.py"), str(tmp_path), backend],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=280)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)  # its own process group: the script and every engine process it started
            proc.communicate()
    assert proc.returncode == 0, err[-4000:]
    return json.loads(out.split("RESULT ", 1)[1])


@pytest.mark.parametrize("backend", ["local", "dask", "ray"])
def test_a_function_without_replicas_runs_on_every_slot(tmp_path, backend):
    pytest.importorskip({"local": "shoal", "dask": "distributed", "ray": "ray"}[backend])
    out = run_script(tmp_path, backend)
    assert out["unset_replicas"] is None
    assert out["slots"] == out["cores"]  # the embedded engine is sized to the machine's cores
    assert out["unset"] == out["cores"], out  # as many at once as there are slots, never more


def test_unset_replicas_render_one_worker_pod_on_kubernetes():
    pytest.importorskip("kubernetes_validate")
    from shoal.backends.kubernetes import render

    def train(x: int = 1):
        return x

    fn = shoal.function("train", cpu="1", memory="1Gi")(train)
    assert fn.replicas is None
    [cluster] = render(fn, "dask")  # fixed size: no DaskAutoscaler
    assert cluster["spec"]["worker"]["replicas"] == 1
    [ray] = render(fn, "ray")
    group = ray["spec"]["workerGroupSpecs"][0]
    assert (group["replicas"], group["minReplicas"], group["maxReplicas"]) == (1, 1, 1)
    assert ray["spec"]["enableInTreeAutoscaling"] is False
