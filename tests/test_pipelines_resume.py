"""Pipelines from the command line, and resuming one whose driver was killed with SIGKILL (real
processes): completed steps come back cached, the dead driver's open step ends ``driver lost`` and
runs again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from helpers import kill_by_pid

import shoal
from shoal.testing import wait_for

STEPS = textwrap.dedent(
    '''
    import os
    import time


    def add(a: int, b: int = 0):
        return {"sum": a + b}


    def gate(ctx, started: str, release: str):
        """Says it started, then holds until the release file exists."""
        open(started, "w").close()
        while not os.path.exists(release):
            time.sleep(0.05)
        ctx.log_result("value", 5)
    '''
)

FLOWS = textwrap.dedent(
    """
    import shoal

    add = shoal.Function.from_file("steps.py", handler="add")
    gate = shoal.Function.from_file("steps.py", handler="gate")


    @shoal.pipeline
    def gated(started: str = "started", release: str = "release"):
        one = add.submit({"a": 1})
        held = gate.submit({"started": started, "release": release})
        return add.submit({"a": one.output("sum"), "b": held.output("value")})
    """
)


def _folder(tmp_path: Path) -> Path:
    (tmp_path / "steps.py").write_text(STEPS)
    (tmp_path / "flows.py").write_text(FLOWS)
    (tmp_path / "shoal.yaml").write_text("name: demo\nfunctions:\n  gated: flows.py:gated\n")
    return tmp_path


def _shoal(folder: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "shoal.cli.main", "-C", str(folder), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


def test_resume_after_sigkill_reruns_only_what_did_not_complete(tmp_path):
    folder = _folder(tmp_path)
    child = subprocess.Popen(
        [sys.executable, "-m", "shoal.cli.main", "-C", str(folder), "run", "gated"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        project = shoal.Project(folder)
        wait_for(lambda: (folder / "started").exists(), timeout=300, what="the gate step to start")
        parents = project.store.list_runs(function="gated")
        assert len(parents) == 1
        steps = lambda: sorted(project.store.list_runs(parent=parents[0].uid), key=lambda r: r.iteration)  # noqa: E731
        wait_for(lambda: steps()[0].state == "completed", timeout=300, what="the first step to be recorded")
        os.kill(child.pid, signal.SIGKILL)
        child.wait(60)
    finally:
        kill_by_pid([child.pid])
    (folder / "release").touch()

    resumed = _shoal(folder, "pipelines", "resume", parents[0].uid)
    assert resumed.returncode == 0, resumed.stderr + resumed.stdout
    killed = steps()
    assert killed[0].state == "completed"
    assert killed[1].state == "failed" and killed[1].error["type"] == "DriverLost"
    runs = project.store.list_runs(function="gated")
    again = [r for r in runs if r.uid != parents[0].uid][0]
    after = sorted(project.store.list_runs(parent=again.uid), key=lambda r: r.iteration)
    assert [r.state for r in after] == ["cached", "completed", "completed"]
    assert after[0].cached_from == killed[0].uid
    assert after[2].results == {"sum": 6}
    project.close()


def test_cli_runs_lists_shows_and_draws_a_pipeline(tmp_path):
    folder = _folder(tmp_path)
    (folder / "release").touch()
    ran = _shoal(folder, "run", "gated", "--param", "started=s2")
    assert ran.returncode == 0, ran.stderr
    listed = _shoal(folder, "pipelines", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    (record,) = json.loads(listed.stdout)
    assert record["function"] == "gated" and record["params"]["started"] == "s2"
    shown = _shoal(folder, "runs", "show", record["uid"])
    assert "steps (3)" in shown.stdout and "gate" in shown.stdout
    drawn = _shoal(folder, "pipelines", "graph", record["uid"], "--out", str(folder / "graph.svg"))
    assert drawn.returncode == 0, drawn.stderr
    assert drawn.stdout.startswith("flowchart LR")
    assert "-->|sum|" in drawn.stdout and "-->|value|" in drawn.stdout
    assert (folder / "graph.svg").read_text().lstrip().startswith("<?xml")
    not_pipeline = _shoal(folder, "pipelines", "graph", after_step(folder, record["uid"]))
    assert not_pipeline.returncode == 2 and "not a pipeline run" in not_pipeline.stderr


def after_step(folder: Path, uid: str) -> str:
    project = shoal.Project(folder)
    try:
        return project.store.list_runs(parent=uid)[0].uid
    finally:
        project.close()


def test_two_drivers_running_one_pipeline_run_each_step_once(tmp_path):
    folder = _folder(tmp_path)
    command = [sys.executable, "-m", "shoal.cli.main", "-C", str(folder), "run", "gated"]
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    second = None
    project = shoal.Project(folder)
    try:
        wait_for(lambda: (folder / "started").exists(), timeout=300, what="the first driver's gate step to start")
        second = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: len(project.store.list_runs(function="gated")) == 2, timeout=300, what="the second driver")
        (folder / "release").touch()
        assert first.wait(300) == 0, first.stderr.read() if first.stderr else ""
        assert second.wait(300) == 0, second.stderr.read() if second.stderr else ""
    finally:
        kill_by_pid([p.pid for p in (first, second) if p is not None])
    gates = project.store.list_runs(function="gate")
    assert sorted(r.state for r in gates) == ["cached", "completed"]
    ran = next(r for r in gates if r.state == "completed")
    assert next(r for r in gates if r.state == "cached").cached_from == ran.uid
    parents = project.store.list_runs(function="gated")
    later = max(parents, key=lambda r: r.created_at)
    assert [r.state for r in sorted(project.store.list_runs(parent=later.uid), key=lambda r: r.iteration)] == [
        "cached",
        "cached",
        "cached",
    ]
    project.close()
