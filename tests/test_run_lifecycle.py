"""Run records never stay open forever, and runs can be cancelled and deleted (issue 12, point 1).

Real driver processes on SQLite and PostgreSQL (skipped, with the reason, without the server): a
driver killed with SIGKILL mid-map has its open runs ended as failed ``DriverLost`` the next time the
project is opened or its runs are listed, and a live driver's runs are never touched. ``shoal runs
cancel`` reaches runs of this process through their handles and runs of another live driver through
its heartbeat; ``shoal runs delete`` removes records with their artifact files. No mocks: every
check reads the database, the artifact folder or what the CLI printed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

import pytest

import shoal
from shoal.store import Store
from shoal.store import drivers as drivers_sql
from shoal.store.schema import drivers as drivers_table

from conftest import PG_ADMIN_URL, _PG_REASON
from helpers import crash, wait_for

HANDLERS = '''\
import pathlib
import time


def wait(i: int, folder: str):
    """Say it started, then wait for the test's release file (bounded)."""
    pathlib.Path(folder, f"started-{i}").touch()
    end = time.monotonic() + 300
    while not pathlib.Path(folder, "release").exists() and time.monotonic() < end:
        time.sleep(0.05)
    pathlib.Path(folder, f"finished-{i}").touch()
    return {"i": i}


def art(ctx, i: int = 0):
    ctx.log_artifact("blob", b"payload %d" % i)
    print("logged", i)
    return {"i": i}


def boom(n: int = 0):
    print("about to fail")
    raise RuntimeError(f"kaboom {n}")


def quiet():
    return 1
'''

DRIVER = '''\
import pathlib
import sys

import shoal


def main():
    folder, name, database, backend, count = sys.argv[1], sys.argv[2], sys.argv[3] or None, sys.argv[4], int(sys.argv[5])
    project = shoal.Project(folder, name=name, database=database)
    fn = shoal.Function.from_file(pathlib.Path(folder) / "handlers.py", "wait", replicas=(1, 2))
    items = [{"i": i, "folder": folder} for i in range(count)]
    if count == 1:
        runs = [fn.run(items[0], project=project, backend=backend, watch=False)]
    else:
        runs = fn.map(items, project=project, backend=backend, batch_size=1)
    print("STATES", " ".join(r.state for r in runs), flush=True)
    project.close()


if __name__ == "__main__":
    main()
'''

# Records runs as this process, then dies without ending them.
DIES = '''\
import os
import signal
import sys

from shoal.store import Store

store = Store(sys.argv[1], project=sys.argv[2])
store.create_runs([{"uid": uid, "function": "f", "function_hash": "0" * 64, "state": state}
                   for uid, state in zip(sys.argv[3::2], sys.argv[4::2])])
os.kill(os.getpid(), signal.SIGKILL)
'''


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")} | {"COLUMNS": "200"}


def cli(cwd: Path, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "shoal.cli.main", *args],
        cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=120, input=input,
    )


def make_place(folder: Path, monkeypatch, kind: str) -> tuple[Path, str, str]:
    """(folder, project name, database URL or "") of a fresh project on SQLite or PostgreSQL."""
    monkeypatch.chdir(folder)
    for name in ("SHOAL_DATABASE", "SHOAL_ARTIFACTS", "SHOAL_PROJECT_DIR"):
        monkeypatch.delenv(name, raising=False)
    (folder / "handlers.py").write_text(HANDLERS)
    (folder / "driver.py").write_text(DRIVER)
    if kind == "postgresql":
        if _PG_REASON is not None:
            pytest.skip(_PG_REASON)
        return folder, f"t{uuid.uuid4().hex[:12]}", PG_ADMIN_URL
    return folder, "life", ""


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def place(request, tmp_path, monkeypatch):
    """A project on SQLite, then on PostgreSQL."""
    return make_place(tmp_path, monkeypatch, request.param)


@pytest.fixture
def sqlite_place(tmp_path, monkeypatch):
    """A project on SQLite in its folder (what the CLI opens there), with a shoal.yaml."""
    place = make_place(tmp_path, monkeypatch, "sqlite")
    (tmp_path / "shoal.yaml").write_text(f"name: {place[1]}\n")
    return place


def open_project(place: tuple[Path, str, str]) -> shoal.Project:
    folder, name, database = place
    return shoal.Project(folder, name=name, database=database or None)


def submit_wait(project: shoal.Project, folder: Path) -> shoal.RunHandle:
    """The ``wait`` handler submitted on the local backend: it runs until ``release`` exists."""
    fn = shoal.Function.from_file(folder / "handlers.py", "wait")
    return fn.submit({"i": 0, "folder": str(folder)}, project=project, backend="local")


def database_of(folder: Path, database: str) -> str:
    return database or f"sqlite:///{folder / '.shoal' / 'shoal.db'}"


def raw_store(folder: Path, name: str, database: str) -> Store:
    """The project's store without a Project: it never ends anyone's runs by itself."""
    return Store(database_of(folder, database), project=name)


def start_driver(folder: Path, name: str, database: str, backend: str, count: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(folder / "driver.py"), str(folder), name, database, backend, str(count)],
        cwd=folder, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def wait_running(driver: subprocess.Popen, store: Store, folder: Path, count: int = 1) -> None:
    """Until ``count`` handlers have started and their records say running (a map's parent aside)."""
    def ready() -> bool:
        assert driver.poll() is None, driver.communicate()
        started = len(list(folder.glob("started-*")))
        running = [r for r in store.list_runs(state="running") if "i" in r.params]
        return started >= count and len(running) >= count

    wait_for(ready, timeout=120, what="runs started and recorded running")


@contextlib.contextmanager
def running_driver(place: tuple[Path, str, str], backend: str, count: int, started: int) -> Iterator[tuple[Store, subprocess.Popen]]:
    """A driver process mapping ``count`` runs of ``wait``, once ``started`` of them run; with the
    project's store. Killed if it still runs at the end, and the store closed."""
    folder, name, database = place
    store = raw_store(folder, name, database)
    driver = start_driver(folder, name, database, backend, count)
    try:
        wait_running(driver, store, folder, count=started)
        yield store, driver
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.communicate(timeout=60)
        store.close()


# -- a driver that died ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "backend, kind", [("local", "sqlite"), pytest.param("local", "postgresql", marks=pytest.mark.postgres), ("dask", "sqlite")]
)
def test_a_driver_killed_mid_map_has_its_open_runs_ended_when_runs_are_listed(tmp_path, monkeypatch, backend, kind):
    folder, name, database = make_place(tmp_path, monkeypatch, kind)
    project = shoal.Project(folder, name=name, database=database or None)
    project.store  # opened while the driver lives: nothing of it is ended
    store = raw_store(folder, name, database)
    driver = start_driver(folder, name, database, backend, 4)
    try:
        wait_running(driver, store, folder, count=2)
        assert project.runs.list(state="running")  # listing while it lives ends nothing
    finally:
        crash(driver)
    assert driver.returncode == -signal.SIGKILL
    left_open = store.list_runs(state=("pending", "running"))
    assert len(left_open) == 5  # the parent and its 4 runs: nothing ended them yet

    runs = project.runs.list(limit=None)
    assert len(runs) == 5 and {r.state for r in runs} == {"failed"}
    for run in runs:
        assert run.error["type"] == "DriverLost" and f"pid {driver.pid}" in run.error["message"]
        assert "the driver died" in run.error["message"] and run.ended_at is not None
    was_running = {r.uid for r in left_open if r.state == "running"}
    by_uid = {r.uid: r for r in runs}
    assert len(was_running) >= 3  # the parent and the two runs its handlers were in
    assert all("while the run was running" in by_uid[uid].error["message"] for uid in was_running)
    assert all("before the run started" in r.error["message"] for r in runs if r.uid not in was_running)
    assert not list(folder.glob("finished-*"))
    store.close()
    project.close()


def dead_driver(folder: Path, name: str, database: str, states: dict[str, str]) -> int:
    """Record ``states`` (uid -> state) from a process that then kills itself; returns its PID."""
    script = folder / "dies.py"
    script.write_text(DIES)
    pairs = [item for pair in states.items() for item in pair]
    process = subprocess.Popen([sys.executable, str(script), database_of(folder, database), name, *pairs], env=clean_env())
    assert process.wait(60) == -signal.SIGKILL
    return process.pid


def test_opening_the_project_ends_the_runs_of_a_driver_that_died(place):
    folder, name, database = place
    uids = {uuid.uuid4().hex: "pending", uuid.uuid4().hex: "running"}
    dead_driver(folder, name, database, uids)
    store = raw_store(folder, name, database)
    assert {r.state for r in store.list_runs()} == {"pending", "running"}

    project = shoal.Project(folder, name=name, database=database or None)
    project.store  # opening it is enough
    ended = {r.uid: r for r in store.list_runs()}
    assert {r.state for r in ended.values()} == {"failed"}
    assert all(r.error["type"] == "DriverLost" for r in ended.values())
    store.close()
    project.close()


def test_shoal_runs_list_ends_the_runs_of_a_driver_that_died(sqlite_place):
    folder, name, database = sqlite_place
    uid = uuid.uuid4().hex
    dead_driver(folder, name, database, {uid: "running"})
    proc = cli(folder, "runs", "list", "--json")
    assert proc.returncode == 0, proc.stderr
    [run] = json.loads(proc.stdout)
    assert run["uid"] == uid and run["state"] == "failed" and run["error"]["type"] == "DriverLost"


def test_a_live_driver_keeps_its_runs_and_beats(place):
    folder, name, database = place
    with running_driver(place, "local", count=3, started=2) as (store, driver):
        project = open_project(place)
        before = {r.uid: r.state for r in project.runs.list(limit=None)}  # opened and listed
        assert sorted(before.values()) == ["pending", "running", "running", "running"]
        [owner] = {r.driver for r in store.list_runs()}
        assert set(store.live_drivers([owner])) == {owner}
        if not database:  # its heartbeat moves on (every 10 s) while it has open runs
            with store.engine.connect() as connection:
                first = connection.execute(drivers_table.select()).one()
            wait_for(lambda: store.drivers([owner])[0][owner].heartbeat_at > first.heartbeat_at, timeout=60, what="a heartbeat")
        assert {r.uid: r.state for r in project.runs.list(limit=None)} == before
        (folder / "release").touch()
        out, err = driver.communicate(timeout=120)
        assert driver.returncode == 0, err
        assert "STATES completed completed completed" in out
        assert {r.state for r in project.runs.list(limit=None)} == {"completed"}
        project.close()


def test_what_makes_a_driver_lost():
    me = drivers_sql.current()
    now = datetime.now(timezone.utc)
    alive = drivers_sql.DriverRow("a" * 32, me.host, me.machine, me.pid, me.process_start, now - timedelta(days=1))
    assert drivers_sql.lost_reason(alive, me, now) is None  # this machine: the PID decides, not the heartbeat
    if me.process_start is not None:  # the same PID with another start time is another process
        reused = drivers_sql.DriverRow("b" * 32, me.host, me.machine, me.pid, me.process_start - 100, now)
        assert "died" in drivers_sql.lost_reason(reused, me, now)
    elsewhere = drivers_sql.DriverRow("c" * 32, "other", "other/pid:[1]", me.pid, None, now - timedelta(seconds=60))
    assert drivers_sql.lost_reason(elsewhere, me, now) is None
    stale = drivers_sql.DriverRow("d" * 32, "other", "other/pid:[1]", 1, None, now - timedelta(seconds=drivers_sql.STALE_AFTER + 1))
    assert "heartbeats" in drivers_sql.lost_reason(stale, me, now)
    assert drivers_sql.lost_reason(drivers_sql.DriverRow(me.id, "x", "y", 1, None, now - timedelta(days=9)), me, now) is None


def test_a_driver_on_another_machine_is_lost_only_when_its_heartbeat_is_stale(place):
    folder, name, database = place
    store = raw_store(folder, name, database)
    now = datetime.now(timezone.utc)
    fresh, stale = uuid.uuid4().hex, uuid.uuid4().hex
    with store.engine.begin() as connection:
        for key, beat in ((fresh, now), (stale, now - timedelta(seconds=drivers_sql.STALE_AFTER + 60))):
            connection.execute(drivers_table.insert().values(
                project=name, id=key, host="far", machine="far/pid:[1]", pid=1, process_start=None,
                heartbeat_at=beat, created_at=beat,
            ))
    store.create_runs([
        {"uid": "fresh" + uuid.uuid4().hex[:8], "function": "f", "function_hash": "0" * 64, "state": "running", "driver": fresh},
        {"uid": "stale" + uuid.uuid4().hex[:8], "function": "f", "function_hash": "0" * 64, "state": "running", "driver": stale},
    ])
    project = shoal.Project(folder, name=name, database=database or None)
    states = {r.uid[:5]: r for r in project.runs.list()}
    assert states["fresh"].state == "running"
    assert states["stale"].state == "failed" and "stopped sending heartbeats" in states["stale"].error["message"]
    project.close()
    store.close()


# -- cancel ------------------------------------------------------------------------------------------
def test_cancel_stops_a_run_of_this_process_through_its_handle(place):
    folder, project = place[0], open_project(place)
    handle = submit_wait(project, folder)
    wait_for(lambda: (folder / "started-0").exists(), what="the handler's start")
    [outcome] = project.runs.cancel(handle.uid[:10])
    assert (outcome.uid, outcome.outcome) == (handle.uid, "stopping")
    assert handle.wait(60) and handle.result().state == "cancelled"
    assert project.runs.get(handle.uid).state == "cancelled"
    assert not (folder / "finished-0").exists()
    [again] = project.runs.cancel(handle.uid)
    assert again.outcome == "ended" and again.detail == "already cancelled"
    project.close()


def test_cancel_marks_a_run_nobody_drives(place):
    project = open_project(place)
    uid = uuid.uuid4().hex
    project.store.create_runs([{"uid": uid, "function": "f", "function_hash": "0" * 64, "driver": None}])
    [outcome] = project.runs.cancel(uid)
    assert outcome.outcome == "cancelled" and outcome.state == "pending"
    run = project.runs.get(uid)
    assert run.state == "cancelled" and "cancelled before it started" in run.error["message"]
    project.store.update_run(uid, state="running")  # a late start never reopens it
    assert project.runs.get(uid).state == "cancelled"
    project.close()


def test_shoal_runs_cancel_reaches_a_map_of_another_live_driver(sqlite_place):
    folder = sqlite_place[0]
    with running_driver(sqlite_place, "local", count=2, started=2) as (store, driver):
        [parent] = [r for r in store.list_runs() if r.parent is None]
        proc = cli(folder, "runs", "cancel", parent.uid)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.count("running -> cancelled") == 3
        assert f"its driver (pid {driver.pid} on " in proc.stdout
        assert {r.state for r in store.list_runs()} == {"cancelled"}  # recorded at once
        out, err = driver.communicate(timeout=120)  # its heartbeat (10 s) stops the handlers
        assert driver.returncode == 0, err
        assert "STATES cancelled cancelled" in out
        assert not list(folder.glob("finished-*"))
        children = store.list_runs(parent=parent.uid)
        assert {r.state for r in children} == {"cancelled"}
        assert store.get_run(parent.uid).state == "cancelled"  # as its driver recorded it at the end
    proc = cli(folder, "runs", "cancel", "nosuchuid")
    assert proc.returncode == 2 and "UID" in proc.stderr and "nosuchuid" in proc.stderr


# -- delete ------------------------------------------------------------------------------------------
def artifact_files(folder: Path) -> list[Path]:
    return sorted(p for p in (folder / ".shoal" / "artifacts").rglob("*") if p.is_file() and "/runs/" in str(p))


def test_delete_removes_records_children_and_artifact_files(place):
    (folder, name, _), project = place, open_project(place)
    fn = shoal.Function.from_file(folder / "handlers.py", "art")
    single = fn.run({"i": 7}, project=project, backend="local", watch=False)
    mapped = fn.map([{"i": i} for i in range(3)], project=project, backend="local")
    assert len(artifact_files(folder)) == 4
    parent = mapped[0].parent

    result = project.runs.delete(single.uid)
    assert result.deleted == [single.uid] and result.artifacts_removed == 1
    assert not (folder / ".shoal" / "artifacts" / name / "runs" / single.uid).exists()
    with pytest.raises(shoal.NotFoundError):
        project.runs.get(single.uid)

    plan = project.runs.plan_delete(parent)
    assert len(plan.runs) == 4 and plan.children == 3 and plan.artifact_count == 3
    assert len(artifact_files(folder)) == 3  # a plan changes nothing
    result = plan.execute()
    assert sorted(result.deleted) == sorted([parent] + [r.uid for r in mapped])
    assert artifact_files(folder) == [] and project.runs.list() == []
    project.close()


def test_delete_skips_open_runs_of_a_live_driver(place):
    folder, project = place[0], open_project(place)
    handle = submit_wait(project, folder)
    wait_for(lambda: project.store.get_run(handle.uid).state == "running", what="the run recorded running")
    plan = project.runs.plan_delete(state="running")
    assert plan.runs == [] and [r.uid for r, _ in plan.skipped] == [handle.uid]
    assert "live driver" in plan.skipped[0][1] and f"shoal runs cancel {handle.uid}" in plan.skipped[0][1]
    assert project.runs.delete(handle.uid).deleted == []
    assert project.runs.get(handle.uid).state == "running"
    (folder / "release").touch()
    assert handle.result(60).state == "completed"
    assert project.runs.delete(state="completed").deleted == [handle.uid]
    project.close()


def test_shoal_runs_delete_asks_filters_and_refuses_bad_input(sqlite_place):
    folder, name, database = sqlite_place
    for args in (["run", "handlers.py:art", "-p", "i=1"], ["run", "handlers.py:boom"], ["run", "handlers.py:art", "-p", "i=2"]):
        cli(folder, *args)
    with shoal.Project(folder, name=name) as project:
        runs = {r.function + str(r.params.get("i", "")): r.uid for r in project.runs.list()}
    assert len(artifact_files(folder)) == 2

    for args, flag in (
        (["nosuchuid"], "UID"),
        (["--before", "2026-13-45"], "--before"),
        (["--state", "done"], "--state"),
        ([runs["art1"], "--state", "failed"], "--state"),
        ([], "UID"),
    ):
        proc = cli(folder, "runs", "delete", *args, "--yes")
        assert proc.returncode == 2, (args, proc.stderr)
        assert flag in proc.stderr and proc.stderr.startswith("error:") and "Traceback" not in proc.stderr

    proc = cli(folder, "runs", "delete", runs["art1"], input="n\n")
    assert proc.returncode == 1 and "nothing deleted" in proc.stderr
    assert len(artifact_files(folder)) == 2
    proc = cli(folder, "runs", "delete", runs["art1"], input="y\n")
    assert proc.returncode == 0, proc.stderr
    assert "delete 1 run(s) (1 completed) and 1 artifact(s)?" in proc.stdout
    assert "deleted 1 run(s) and 1 artifact file(s)" in proc.stdout
    assert not (folder / ".shoal" / "artifacts" / name / "runs" / runs["art1"]).exists()

    tomorrow = (datetime.now() + timedelta(days=1)).strftime("%Y-%m-%d")
    proc = cli(folder, "runs", "delete", "--state", "failed", "--before", tomorrow, "--yes")
    assert proc.returncode == 0 and "deleted 1 run(s)" in proc.stdout, proc.stderr
    proc = cli(folder, "runs", "delete", "--before", "2000-01-01", "--yes")
    assert proc.returncode == 0 and "no runs to delete" in proc.stdout
    with shoal.Project(folder, name=name) as project:
        assert [r.uid for r in project.runs.list()] == [runs["art2"]]
    assert len(artifact_files(folder)) == 1


# -- logs --------------------------------------------------------------------------------------------
def test_runs_logs_shows_the_traceback_of_a_failed_run_and_says_when_there_is_no_log(sqlite_place):
    folder, name, database = sqlite_place
    cli(folder, "run", "handlers.py:boom", "-p", "n=3")
    cli(folder, "run", "handlers.py:quiet")
    with shoal.Project(folder, name=name) as project:
        failed = project.runs.list(function="boom")[0].uid
        quiet = project.runs.list(function="quiet")[0].uid
    proc = cli(folder, "runs", "logs", failed[:8])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("about to fail\nerror: RuntimeError: kaboom 3\n")
    assert "Traceback (most recent call last)" in proc.stdout and 'raise RuntimeError(f"kaboom {n}")' in proc.stdout
    proc = cli(folder, "runs", "logs", quiet)
    assert proc.returncode == 0 and proc.stdout == ""
    assert f"run {quiet} (completed) has no log lines" in proc.stderr
