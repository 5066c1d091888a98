"""Step caching outside pipelines: ``fn.run/submit/map(cache=True, ...)`` on real SQLite and
PostgreSQL, keys compared across processes, and the store claim between two real driver processes.

Executions are counted from the store (a cached run never executes: only ``completed`` runs did).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import fsspec
import pytest
import sqlalchemy as sa

import shoal
from shoal.errors import ParamError, RunFailedError
from shoal.step_cache import CacheOptions, ContentDigest, cache_key
from shoal.store import Store
from shoal.testing.waiting import wait_for

from helpers import crash

HANDLERS = '''\
import pathlib
import time


def make(ctx, n: int, scale: float = 1.0, verbose: bool = False):
    ctx.log_artifact("data", b"bytes %d" % n)
    return {"value": n * scale}


def loose(options=None):
    return {"count": len(options or {})}


def flaky(folder: str):
    marker = pathlib.Path(folder, "failed-once")
    if not marker.exists():
        marker.write_text("")
        raise RuntimeError("the first call fails")
    return {"ok": 1}


def gated(folder: str):
    """Marks that it started, then waits for the test's go."""
    pathlib.Path(folder, f"started-{time.monotonic_ns()}").write_text("")
    gate = pathlib.Path(folder, "go")
    while not gate.exists():
        time.sleep(0.02)
    return {"done": 1}
'''

# One driver: runs ``gated`` with cache=True and prints what it got.
DRIVER = '''\
import pathlib
import sys

import shoal

folder, name, database = sys.argv[1], sys.argv[2], sys.argv[3] or None
project = shoal.Project(folder, name=name, database=database)
fn = shoal.Function.from_file(pathlib.Path(folder) / "handlers.py", "gated")
run = fn.run({"folder": folder}, project=project, backend="local", cache=True, watch=False)
print("RESULT", run.state, run.uid, run.cached_from or "-", flush=True)
project.close()
'''

# Prints the cache key of ``make`` with n=3, computed in a process of its own.
KEY = '''\
import sys
import shoal
from shoal.cached_runs import _handler
from shoal.step_cache import cache_key, with_defaults

fn = shoal.Function.from_file(sys.argv[1], "make")
print(cache_key(fn.hash, with_defaults(_handler(fn), {"n": 3}), {}, version="v1"))
'''


@pytest.fixture
def handlers(any_project) -> Path:
    path = Path.cwd() / "handlers.py"  # the project fixtures work in their temporary folder
    path.write_text(HANDLERS)
    return path


def fn_of(handlers: Path, name: str = "make") -> shoal.Function:
    return shoal.Function.from_file(handlers, name)


def executions(project: shoal.Project) -> int:
    return len(project.runs.list(state="completed", limit=None))


def claims(project: shoal.Project) -> list:
    with project.store.engine.connect() as connection:
        return connection.execute(
            sa.text("SELECT key, run_uid FROM cache_claims WHERE project = :p"), {"p": project.name}
        ).all()


# -- keys ---------------------------------------------------------------------------------------------
def test_the_key_is_the_same_in_another_process(handlers):
    fn = fn_of(handlers)
    from shoal.cached_runs import _handler
    from shoal.step_cache import with_defaults

    here = cache_key(fn.hash, with_defaults(_handler(fn), {"n": 3}), {}, version="v1")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    there = subprocess.run(
        [sys.executable, "-c", KEY, str(handlers)], env=env, capture_output=True, text=True, timeout=120, check=True
    ).stdout.split()[-1]
    assert there == here and len(here) == 64


def test_keys_follow_values_not_their_spelling():
    base = cache_key("f" * 64, {"a": 1, "b": [1.5, "x"]}, {"data": ContentDigest("0" * 64)})
    assert cache_key("f" * 64, {"b": (1.5, "x"), "a": 1}, {"data": ContentDigest("0" * 64)}) == base
    assert cache_key("f" * 64, {"a": 1.0, "b": [1.5, "x"]}, {"data": ContentDigest("0" * 64)}) != base
    assert cache_key("f" * 64, {"a": 1, "b": [1.5, "x"]}, {"data": ContentDigest("1" * 64)}) != base
    assert cache_key("e" * 64, {"a": 1, "b": [1.5, "x"]}, {"data": ContentDigest("0" * 64)}) != base
    assert cache_key("f" * 64, {"a": float("nan")}, {}) == cache_key("f" * 64, {"a": float("nan")}, {})


def test_bad_cache_options_name_the_argument():
    with pytest.raises(ParamError, match="refresh.*cache=True"):
        CacheOptions.from_call(refresh=True)
    with pytest.raises(ParamError, match="cache_expires"):
        CacheOptions.from_call(cache=True, cache_expires=-1)
    with pytest.raises(ParamError, match="cache_ignore takes a list"):
        CacheOptions.from_call(cache=True, cache_ignore="verbose")
    with pytest.raises(ParamError, match="cache_version"):
        CacheOptions.from_call(cache=True, cache_version=1.5)


# -- reuse --------------------------------------------------------------------------------------------
def test_a_cached_run_names_its_source_and_has_its_outputs(any_project, handlers):
    fn = fn_of(handlers)
    first = fn.run({"n": 2}, project=any_project, cache=True)
    again = fn.run({"n": 2, "scale": 1.0}, project=any_project, cache=True)  # the default, given
    assert first.state == "completed" and first.cache_key
    assert again.state == "cached" and again.ok and again.cached_from == first.uid
    assert again.results == first.results and again.output("data") == b"bytes 2"
    assert again.cache_key == first.cache_key
    stored = any_project.runs.get(again.uid)
    assert stored.state == "cached" and stored.cached_from == first.uid
    assert stored.output("data") == b"bytes 2" and stored.params == {"n": 2, "scale": 1.0}
    assert executions(any_project) == 1
    assert fn.run({"n": 3}, project=any_project, cache=True).state == "completed"
    assert fn.run({"n": 2}, project=any_project).state == "completed"  # cache off: runs
    assert not claims(any_project)


def test_cache_ignore_and_cache_version(any_project, handlers):
    fn = fn_of(handlers)
    first = fn.run({"n": 1}, project=any_project, cache=True, cache_ignore=["verbose"])
    loud = fn.run({"n": 1, "verbose": True}, project=any_project, cache=True, cache_ignore=["verbose"])
    assert loud.state == "cached" and loud.cached_from == first.uid
    with pytest.raises(ParamError, match="cache_ignore names 'verbos'"):
        fn.run({"n": 1}, project=any_project, cache=True, cache_ignore=["verbos"])
    v1 = fn.run({"n": 1}, project=any_project, cache=True, cache_version="1")
    assert v1.state == "completed"  # a version makes a new key
    assert fn.run({"n": 1}, project=any_project, cache=True, cache_version="1").cached_from == v1.uid
    assert fn.run({"n": 1}, project=any_project, cache=True, cache_version=2).state == "completed"


def test_an_uncacheable_parameter_is_logged_and_the_run_runs(any_project, handlers, caplog):
    fn = fn_of(handlers, "loose")
    with caplog.at_level(logging.INFO, logger="shoal.cache"):
        runs = [fn.run({"options": {1: "a"}}, project=any_project, cache=True) for _ in range(2)]
    assert [r.state for r in runs] == ["completed", "completed"]
    reasons = [r.getMessage() for r in caplog.records if r.name == "shoal.cache"]
    assert len(reasons) == 2 and all("not cached" in m and "'options'" in m and "int" in m for m in reasons)


def test_a_run_whose_artifact_is_gone_runs_again(any_project, handlers):
    fn = fn_of(handlers)
    first = fn.run({"n": 5}, project=any_project, cache=True)
    fs, path = fsspec.core.url_to_fs(first.artifacts["data"].url)
    fs.rm(path)
    second = fn.run({"n": 5}, project=any_project, cache=True)
    assert second.state == "completed" and second.output("data") == b"bytes 5"
    assert fn.run({"n": 5}, project=any_project, cache=True).cached_from == second.uid


def test_expiry_and_refresh(any_project, handlers):
    fn = fn_of(handlers)
    first = fn.run({"n": 7}, project=any_project, cache=True)
    expired = fn.run({"n": 7}, project=any_project, cache=True, cache_expires=0)
    assert expired.state == "completed"
    fresh = fn.run({"n": 7}, project=any_project, cache=True, cache_expires=timedelta(hours=1))
    assert fresh.cached_from == expired.uid  # the newest completed run of the key
    refreshed = fn.run({"n": 7}, project=any_project, cache=True, refresh=True)
    assert refreshed.state == "completed"
    assert fn.run({"n": 7}, project=any_project, cache=True).cached_from == refreshed.uid
    assert executions(any_project) == 3 and first.uid != refreshed.uid


def test_a_cached_run_is_deleted_without_its_sources_files(project, handlers):
    fn = fn_of(handlers)
    first = fn.run({"n": 4}, project=project, cache=True)
    again = fn.run({"n": 4}, project=project, cache=True)
    project.runs.delete([again.uid])
    assert project.runs.get(first.uid).output("data") == b"bytes 4"
    assert fn.run({"n": 4}, project=project, cache=True).cached_from == first.uid


def test_submit_and_map_on_dask(any_project, handlers, dask_backend):
    fn = fn_of(handlers)
    handle = fn.submit({"n": 1}, project=any_project, backend=dask_backend, cache=True)
    source = handle.result()
    assert source.state == "completed"
    cached = fn.submit({"n": 1}, project=any_project, backend=dask_backend, cache=True)
    assert cached.done() and cached.result().cached_from == source.uid
    runs = fn.map([1, 2, 2], project=any_project, backend=dask_backend, cache=True, batch_size=1)
    assert runs[0].state == "cached" and runs[0].cached_from == source.uid
    assert runs[1].state == "completed"
    assert runs[2].state == "cached" and runs[2].cached_from == runs[1].uid  # waited for its twin
    assert [r.results["value"] for r in runs] == [1.0, 2.0, 2.0]
    parent = any_project.runs.get(runs[0].parent)
    assert parent.state == "completed"
    shoal.gather(runs)
    assert not claims(any_project)


def test_runs_list_and_show_say_cached_from(project, handlers):
    (Path.cwd() / "shoal.yaml").write_text("name: test\n")
    fn = fn_of(handlers)
    first = fn.run({"n": 9}, project=project, cache=True)
    again = fn.run({"n": 9}, project=project, cache=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")} | {"COLUMNS": "200"}

    def cli(*args: str) -> str:
        proc = subprocess.run([sys.executable, "-m", "shoal.cli.main", *args], env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    assert f"cached from {first.uid[:12]}" in cli("runs", "list")
    shown = cli("runs", "show", again.uid)
    assert "cached from" in shown and first.uid in shown
    assert any(r.state == "cached" for r in project.runs.list(state="cached"))


# -- the claim between drivers ------------------------------------------------------------------------
def _place(any_project: shoal.Project) -> tuple[Path, str, str]:
    folder = Path.cwd()
    (folder / "driver.py").write_text(DRIVER)
    return folder, any_project.name, _url(any_project)


def _url(project: shoal.Project) -> str:
    return project.store.engine.url.render_as_string(hide_password=False)


def _driver(folder: Path, name: str, database: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")}
    return subprocess.Popen(
        [sys.executable, str(folder / "driver.py"), str(folder), name, database],
        cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _result(process: subprocess.Popen) -> list[str]:
    out, err = process.communicate(timeout=120)
    lines = [line for line in out.splitlines() if line.startswith("RESULT")]
    assert process.returncode == 0 and lines, err
    return lines[-1].split()[1:]


def test_two_drivers_with_one_key_run_it_once(any_project, handlers):
    folder, name, database = _place(any_project)
    first = _driver(folder, name, database)
    second = None
    try:
        wait_for(lambda: list(folder.glob("started-*")), timeout=120, what="the first driver's handler started")
        second = _driver(folder, name, database)
        # The second records its run pending while it waits on the first one's claim.
        wait_for(
            lambda: len(any_project.store.list_runs(state="pending")) == 1, timeout=120, what="the second driver waiting"
        )
        (folder / "go").write_text("")
        ran, waited = _result(first), _result(second)
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(60)
    assert ran[0] == "completed" and waited[0] == "cached" and waited[2] == ran[1]
    assert len(list(folder.glob("started-*"))) == 1
    assert not claims(any_project)


def test_submit_returns_at_once_while_another_driver_holds_the_key(any_project, handlers):
    folder, name, database = _place(any_project)
    holder = _driver(folder, name, database)
    try:
        wait_for(lambda: claims(any_project), timeout=120, what="the other driver's claim")
        fn = shoal.Function.from_file(folder / "handlers.py", "gated")
        given_up = fn.submit({"folder": str(folder)}, project=any_project, backend="local", cache=True)
        waiting = fn.submit({"folder": str(folder)}, project=any_project, backend="local", cache=True)
        assert not given_up.done() and not waiting.done()
        assert given_up.cancel()
        cancelled = given_up.result(timeout=120)
        assert cancelled.state == "cancelled" and "waited for another driver" in cancelled.error["message"]
        assert not waiting.done()
        (folder / "go").write_text("")
        ran = _result(holder)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(60)
    reused = waiting.result(timeout=120)
    assert ran[0] == "completed" and reused.state == "cached" and reused.cached_from == ran[1]
    assert any_project.runs.get(reused.uid).state == "cached"
    assert len(list(folder.glob("started-*"))) == 1


def _killed_while_holding_a_claim(project: shoal.Project) -> tuple[Path, str]:
    """A driver that claimed the key of ``gated`` and started it, killed with SIGKILL: (folder, name)."""
    folder, name, database = _place(project)
    dying = _driver(folder, name, database)
    try:
        wait_for(lambda: list(folder.glob("started-*")), timeout=120, what="the driver's handler started")
        wait_for(lambda: claims(project), timeout=120, what="the driver's claim")
    finally:
        crash(dying)
    return folder, name


def test_a_dead_drivers_claim_is_taken_over(any_project, handlers):
    folder, name = _killed_while_holding_a_claim(any_project)
    (folder / "go").write_text("")
    fn = shoal.Function.from_file(folder / "handlers.py", "gated")
    # Taken over at once: the holder's driver is gone (nothing swept its records yet).
    store = Store(_url(any_project), project=name)
    try:
        assert [r.state in ("pending", "running") for r in store.list_runs()] == [True]  # still open
    finally:
        store.close()
    run = fn.run({"folder": str(folder)}, project=any_project, backend="local", cache=True)
    assert run.state == "completed" and not claims(any_project)
    lost = [r for r in any_project.runs.list() if r.uid != run.uid]
    assert len(lost) == 1 and lost[0].state == "failed" and lost[0].error["type"] == "DriverLost"


def test_a_swept_driver_leaves_no_claim(any_project, handlers):
    _killed_while_holding_a_claim(any_project)
    assert claims(any_project)
    any_project.runs.list()  # ends the dead driver's runs (DriverLost) and drops its claims
    assert not claims(any_project)


def test_a_failed_run_is_not_reused(any_project, handlers):
    fn = fn_of(handlers, "flaky")
    folder = str(Path.cwd())
    with pytest.raises(RunFailedError):
        fn.run({"folder": folder}, project=any_project, cache=True).raise_for_state()
    second = fn.run({"folder": folder}, project=any_project, cache=True)
    assert second.state == "completed"
    assert fn.run({"folder": folder}, project=any_project, cache=True).cached_from == second.uid
    assert not claims(any_project)
