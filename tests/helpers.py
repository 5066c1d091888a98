"""Python helpers shared by the tests: polling (``wait_for``, shipped in ``shoal.testing``), processes
by PID, RunTasks as the runner builds them, colliding hash prefixes, and Ctrl-C in a process running
``fn.map``.

Importable as ``helpers`` because pytest puts this folder (it has a conftest.py and no __init__.py)
on sys.path; handler text lives in handler_sources.py.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable

import psutil

import shoal
from shoal.execution import RunTask
from shoal.testing import wait_for

from handler_sources import INTERRUPTED_MAP, write_handlers


def alive(pid: int) -> bool:
    """True while the process runs (a zombie waiting to be reaped counts as gone)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def functions_from(path: Path, text: str) -> Callable[..., shoal.Function]:
    """``fn(handler, **options)``: a Function made from the handler source ``text``, written to ``path``."""
    path.write_text(text)
    return lambda handler, **options: shoal.Function.from_file(path, handler, **options)


def reaped_pid() -> int:
    """The PID of a process that has exited and been reaped: what a driver that died leaves."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    return gone.pid


def dead_search_driver(study, fn: shoal.Function, project: shoal.Project) -> tuple[dict, Any, dict]:
    """What a search driver killed mid-search leaves in ``study``: its owner entry (an exited
    process's PID), still marked active, naming a running parent run. Returns the owner, a
    ``Driver`` to make the search's run records with, and the parent record (not stored yet)."""
    import socket

    from shoal.runner import open_driver
    from shoal.tuning.driver import ATTR_DRIVER

    owner = {"host": socket.gethostname(), "pid": reaped_pid(), "start": "0"}
    driver = open_driver(fn, "local", project)
    parent = {**driver.new_record({}, {}), "state": "running", "started_at": datetime.now().astimezone()}
    study.set_user_attr(f"{ATTR_DRIVER}{owner['host']}:{owner['pid']}", {**owner, "active": True, "parent": parent["uid"]})
    return owner, driver, parent


def descendants(pid: int) -> list[int]:
    """PIDs of every process below ``pid`` (none once it is gone)."""
    try:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def kill_by_pid(pids: Iterable[int]) -> None:
    """SIGKILL what is left of the processes a test started, and reap its own children."""
    pids = list(pids)
    for pid in pids:
        if alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    for pid in pids:
        try:
            psutil.Process(pid).wait(10)
        except (psutil.NoSuchProcess, psutil.TimeoutExpired, ChildProcessError):
            pass


def cli(cwd: Path | str, *args: str, env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    """Run ``python -m shoal.cli.main ARGS`` in ``cwd`` with a clean shoal environment (no SHOAL_*
    variable of the test runner's), wide enough that tables print whole."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")}
    environ.update({"COLUMNS": "200", **(env or {})})
    return subprocess.run(
        [sys.executable, "-m", "shoal.cli.main", *args],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def crash(driver: subprocess.Popen) -> None:
    """End ``driver`` as a crash would (SIGKILL: no cleanup of its own runs), wait for it, then end
    the engine processes it had started, by PID. Safe when it has already exited."""
    engine = descendants(driver.pid)
    if driver.poll() is None:
        os.kill(driver.pid, signal.SIGKILL)
    driver.wait(60)
    kill_by_pid(engine)


def task(fn: shoal.Function, params: dict | None = None, artifacts: str | Path = "/tmp/shoal-test-artifacts", **fields) -> RunTask:
    """A RunTask as the runner builds it (code shipped, no in-process callable)."""
    return RunTask(
        uid=uuid.uuid4().hex,
        project="test",
        function=fn.name,
        function_hash=fn.hash,
        handler=fn.handler,
        code=fn.code,
        params=params or {},
        artifact_url=str(artifacts),
        **fields,
    )


def colliding_versions(base: shoal.Function, prefix: int = 4) -> tuple[shoal.Function, shoal.Function]:
    """Two versions of ``base`` (they differ in env) whose hashes share their first ``prefix`` characters."""
    seen: dict[str, shoal.Function] = {}
    for i in range(100_000):
        fn = base.with_spec(env={"SEED": str(i)})
        if fn.hash[:prefix] in seen:
            return seen[fn.hash[:prefix]], fn
        seen[fn.hash[:prefix]] = fn
    raise AssertionError(f"no two versions share a hash prefix of {prefix} characters")


def interrupt_map(tmp_path: Path, backend: str, count: int = 4, batch_size: int = 1) -> Path:
    """Run INTERRUPTED_MAP on ``backend`` in a child process of its own session (a terminal's
    foreground job), press Ctrl-C for the whole process group once the first run has started, and
    check that the process ends interrupted and leaves none of its processes behind. Returns the
    project folder that holds the runs' records."""
    handlers = write_handlers(tmp_path)
    script = tmp_path / "interrupted.py"
    script.write_text(INTERRUPTED_MAP)
    folder = tmp_path / "project"
    folder.mkdir()
    log = tmp_path / "script.log"
    with open(log, "w") as output:
        process = subprocess.Popen(
            [sys.executable, str(script), str(folder), str(handlers), backend, str(count), str(batch_size)],
            stdout=output,
            stderr=output,
            start_new_session=True,
        )
        children: list[int] = []
        try:
            wait_for(lambda: list(folder.glob("started-*")) or process.poll() is not None, timeout=120, what="first run start")
            # ... and the driver has heard of it (the start travels back from the worker after the
            # handler began): only then is the run Ctrl-C stops one the driver knows as running.
            wait_for(lambda: process.poll() is not None or recorded_start(folder), timeout=120, what="its start recorded")
            assert process.poll() is None, log.read_text()[-3000:]
            children = descendants(process.pid)
            assert children, "the engine's processes"
            os.killpg(process.pid, signal.SIGINT)
            process.wait(120)
            assert process.returncode != 0, "interrupted, not finished"
            wait_for(lambda: not any(alive(pid) for pid in children), what="no process left")
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(30)
            kill_by_pid(children)
    return folder


def recorded_start(folder: Path) -> bool:
    """Whether the project in ``folder`` has recorded a run's start (written once it has run ~0.5 s)."""
    with shoal.Project(folder, name="interrupted") as project:
        return any(run.started_at is not None for run in project.runs.list())


def interrupted_runs(folder: Path) -> tuple[shoal.Run, list[shoal.Run]]:
    """The parent run of the interrupted map in ``folder`` and its children in input order."""
    with shoal.Project(folder, name="interrupted") as project:
        runs = project.runs.list()
    [parent] = [r for r in runs if r.parent is None]
    children = sorted((r for r in runs if r.parent == parent.uid), key=lambda r: r.iteration)
    return parent, children


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def refused(port: int) -> bool:
    """True when nothing accepts connections on ``port`` of 127.0.0.1."""
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0
