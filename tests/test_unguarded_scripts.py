"""Scripts without an ``if __name__ == "__main__":`` guard run unchanged on every backend.

Each script is a real ``python script.py`` and ``python -c "..."`` subprocess in a project folder of
its own; its top level appends a line to ``top-level.log``, so a worker that ran the script's top
level (the hang of issue 12: every Ray worker started its own nested map) would show. The timeout on
each subprocess call is a safety net against a hang, not a speed assertion. Killed drivers (SIGTERM,
SIGKILL) must leave none of the engine's processes behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import shoal

from helpers import alive, descendants, kill_by_pid, wait_for

HEADER = textwrap.dedent(
    """\
    import os, pathlib, time
    import shoal

    pathlib.Path("top-level.log").open("a").write(f"{os.getpid()}\\n")
    print("TOP-LEVEL OUTPUT", flush=True)
    SCALE = 10


    def helper(x):
        return x * SCALE


    @shoal.function
    def square(x: int = 1):
        return {"accuracy": helper(x * x)}


    """
)

CALLS = {
    # call -> (the script's last lines, runs it records, what it prints)
    "run": ('run = square.run({"x": 3}, backend=BACKEND)\nprint("RESULT", run.state, run.results["accuracy"])\n', 1, "RESULT completed 90"),
    "map": (
        'runs = square.map([{"x": x} for x in range(4)], backend=BACKEND)\n'
        'print("RESULT", [r.results["accuracy"] for r in runs])\n',
        5,  # the parent and four children
        "RESULT [0, 10, 40, 90]",
    ),
    "tune": (
        'result = shoal.tune(square, {"x": [1, 2, 3]}, objective="max.accuracy", n_trials=3, strategy="grid", backend=BACKEND)\n'
        'print("RESULT", result.best_value, len(result.trials_frame()))\n',
        4,  # the search's parent run and three trials
        "RESULT ",
    ),
}

BACKENDS = ["local", "dask", "ray"]


def script_text(call: str, backend: str) -> str:
    return HEADER + f"BACKEND = {backend!r}\n" + CALLS[call][0]


def environment() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("RAY_ADDRESS", "SHOAL_"))}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_script(folder: Path, args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=folder, env=environment(), capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("call", list(CALLS))
def test_an_unguarded_script_runs_once_as_a_file_and_with_dash_c(tmp_path, call, backend):
    text = script_text(call, backend)
    _, expected_runs, expected_output = CALLS[call]
    for form in ("file", "-c"):
        folder = tmp_path / form.strip("-")
        folder.mkdir()
        if form == "file":
            (folder / "script.py").write_text(text)
            result = run_script(folder, ["script.py"])
        else:
            result = run_script(folder, ["-c", text])
        assert result.returncode == 0, f"{form}: {result.stderr[-3000:]}"
        assert result.stdout.count("TOP-LEVEL OUTPUT") == 1, f"{form}: {result.stdout}"
        assert len((folder / "top-level.log").read_text().splitlines()) == 1, f"{form}: a worker ran the top level"
        [line] = [line for line in result.stdout.splitlines() if line.startswith("RESULT")]
        assert line.startswith(expected_output), f"{form}: {line}"
        if call == "tune":
            assert line.split()[1:] == ["90.0", "3"], f"{form}: {line}"
        with shoal.Project(folder) as project:
            runs = project.runs.list()
        assert len(runs) == expected_runs, f"{form}: {[(r.function, r.state) for r in runs]}"
        assert {r.state for r in runs} == {"completed"}, f"{form}: {[(r.function, r.state, r.error) for r in runs]}"


KILLED = textwrap.dedent(
    """\
    BACKEND = {backend!r}


    @shoal.function
    def slow(x: int):
        pathlib.Path({marker!r}).write_text(str(os.getpid()))
        time.sleep(600)


    slow.map([{{"x": x}} for x in range(2)], backend=BACKEND)
    """
)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
@pytest.mark.parametrize("backend", ["dask", "ray"])
def test_a_killed_unguarded_driver_leaves_no_engine_process(tmp_path, backend, sig):
    marker = tmp_path / "running"
    (tmp_path / "script.py").write_text(HEADER + KILLED.format(backend=backend, marker=str(marker)))
    log = tmp_path / "driver.log"
    with open(log, "w") as output:
        driver = subprocess.Popen(
            [sys.executable, "script.py"], cwd=tmp_path, env=environment(), stdout=output, stderr=output,
            start_new_session=True,
        )  # fmt: skip
    engine: list[int] = []
    try:
        wait_for(lambda: _text(marker) or driver.poll() is not None, timeout=240, what="a running handler")
        assert driver.poll() is None, log.read_text()[-3000:]
        engine = descendants(driver.pid)
        assert engine, "the engine's processes"
        assert int(marker.read_text()) in engine, "the handler runs in one of the engine's processes"
        os.kill(driver.pid, sig)
        driver.wait(60)
        try:
            wait_for(lambda: not [pid for pid in engine if alive(pid)], timeout=60, what="no engine process left")
        except AssertionError:
            raise AssertionError(f"left behind: {_described([pid for pid in engine if alive(pid)])}") from None
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait(30)
        kill_by_pid(engine)


def _described(pids: list[int]) -> list[str]:
    import psutil

    out = []
    for pid in pids:
        try:
            out.append(f"{pid} {' '.join(psutil.Process(pid).cmdline())[:150]}")
        except psutil.Error:
            pass
    return out


def _text(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def test_shoal_run_of_an_unguarded_script_runs_only_the_handler(tmp_path):
    """``shoal run script.py:square`` loads the script to find the handler: its top-level map stops
    at that line with a warning naming it (a load starts no runs), and the ray worker gets the
    handler by value, so the top level runs once, in the driver, and one run is recorded."""
    (tmp_path / "script.py").write_text(script_text("map", "ray"))
    shoal_cli = Path(sys.executable).with_name("shoal")
    result = subprocess.run(
        [str(shoal_cli), "run", "script.py:square", "--param", "x=4", "--backend", "ray", "--json"],
        cwd=tmp_path, env=environment(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr  # with --json, stdout holds the JSON only
    assert output.count("TOP-LEVEL OUTPUT") == 1 and "RESULT" not in output
    assert "stopped loading" in result.stderr and "line 19 (runs = square.map(" in result.stderr
    assert len((tmp_path / "top-level.log").read_text().splitlines()) == 1
    with shoal.Project(tmp_path) as project:
        runs = project.runs.list()
    assert [(r.state, r.results) for r in runs] == [("completed", {"accuracy": 160})]
