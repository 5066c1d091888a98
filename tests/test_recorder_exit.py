"""A driver stopped in the middle of a map (SIGTERM, Ctrl-C) loses no outcome that reached it, and
many drivers share one PostgreSQL store. Real driver processes, a real Dask cluster, real databases.

How a test knows what reached the driver: the driver script wraps ``Recorder.finished`` and, once
the recorder has taken an outcome, appends its uid, state and result to a file (one ``os.write`` of
one line on an ``O_APPEND`` descriptor: lines never interleave). Every line in that file must be in
the database afterwards, with that state and result. The map's second half waits for a gate file
the test never creates, so the signal always lands while the map is going; it is sent once the
first outcome has reached the driver, while the rest still stream in.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from conftest import PG_ADMIN_URL, requires_postgres
from helpers import alive, descendants, kill_by_pid, wait_for

import shoal

RUNS = 3000
BATCH = 25

DRIVER = textwrap.dedent(
    """\
    import os, signal, sys
    import shoal
    from shoal.recorder import Recorder

    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C as in a terminal
    folder, database, name, received, gate, runs, batch, first_slow, backend = sys.argv[1:10]
    line_file = os.open(received, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    original = Recorder.finished

    def finished(self, uid, fields, artifacts, then, **options):
        original(self, uid, fields, artifacts, then, **options)  # the recorder has it: it reached the driver
        line = {"uid": uid, "state": fields["state"], "results": fields.get("results")}
        os.write(line_file, (json_dumps(line) + "\\n").encode())

    import json
    json_dumps = json.dumps
    Recorder.finished = finished


    def step(x: int, gate: str = "", first_slow: int = 0) -> int:
        import os, time
        if x >= first_slow:  # the second half waits for a gate that never opens: the map is cut
            deadline = time.monotonic() + 300
            while not os.path.exists(gate) and time.monotonic() < deadline:
                time.sleep(0.05)
        return x * 2


    project = shoal.Project(folder, name=name, database=None if database == "sqlite" else database)
    fn = shoal.function(step)
    items = [{"x": i, "gate": gate, "first_slow": int(first_slow)} for i in range(int(runs))]
    runs_done = fn.map(items, backend=backend, project=project, batch_size=int(batch))
    print("MAP DONE", len(runs_done), flush=True)
    """
)


def _received(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def _start_driver(
    tmp_path: Path, database: str, name: str, tag: str, runs: int, first_slow: int, backend: str = "dask"
) -> tuple[subprocess.Popen, Path]:
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    folder = tmp_path / f"project-{tag}"
    folder.mkdir()
    received = tmp_path / f"received-{tag}.jsonl"
    args = [
        str(folder),
        database,
        name,
        str(received),
        str(tmp_path / "gate-never"),
        str(runs),
        str(BATCH),
        str(first_slow),
        backend,
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")}
    log = open(tmp_path / f"driver-{tag}.log", "w")
    process = subprocess.Popen(
        [sys.executable, str(script), *args], cwd=tmp_path, env=env, stdout=log, stderr=log, start_new_session=True
    )
    log.close()
    return process, received


def _check_recorded(folder: Path, database: str, name: str, received: list[dict]) -> None:
    """Every outcome that reached the driver is in the database with its state and result."""
    with shoal.Project(folder, name=name, database=None if database == "sqlite" else database) as project:
        stored = {run.uid: run for run in project.store.get_runs([line["uid"] for line in received])}
    missing = [line for line in received if line["uid"] not in stored]
    assert not missing, f"{len(missing)} of {len(received)} received outcomes not recorded, e.g. {missing[:3]}"
    wrong = [
        (line, stored[line["uid"]].state, stored[line["uid"]].results)
        for line in received
        if stored[line["uid"]].state != line["state"] or stored[line["uid"]].results != line["results"]
    ]
    assert not wrong, f"{len(wrong)} outcomes recorded differently, e.g. {wrong[:3]}"


@pytest.mark.parametrize("database", ["sqlite", pytest.param(PG_ADMIN_URL, marks=requires_postgres, id="postgresql")])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_a_stopped_driver_records_every_outcome_it_received(tmp_path, database, sig):
    name = f"t{uuid.uuid4().hex[:12]}"
    half = RUNS // 2
    process, received_file = _start_driver(tmp_path, database, name, "one", RUNS, first_slow=half)
    engine: list[int] = []
    try:
        wait_for(lambda: _received(received_file) or process.poll() is not None, timeout=240, what="a first outcome")
        assert process.poll() is None, (tmp_path / "driver-one.log").read_text()[-3000:]
        engine = descendants(process.pid)
        if sig == signal.SIGINT:
            os.killpg(process.pid, signal.SIGINT)  # Ctrl-C reaches the terminal's whole foreground group
        else:
            os.kill(process.pid, signal.SIGTERM)  # `kill <pid>`: the driver alone
        process.wait(180)
        log = (tmp_path / "driver-one.log").read_text()
        assert process.returncode != 0 and "MAP DONE" not in log, log[-3000:]
        received = _received(received_file)
        completed = [line for line in received if line["state"] == "completed"]
        assert completed and len(completed) <= half, log[-3000:]  # stopped in the middle of the map
        _check_recorded(tmp_path / "project-one", database, name, received)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(30)
        kill_by_pid(engine + descendants(process.pid))
    wait_for(lambda: not any(alive(pid) for pid in engine), timeout=60, what="the driver's cluster gone")


@requires_postgres
def test_four_drivers_share_one_postgresql_project(tmp_path):
    """4 driver processes map N runs each into one PostgreSQL project at once: 4N complete records,
    no error, no uid twice. The runs go to each driver's local pool (4 Dask clusters would not fit
    2 cores); what is shared, and tested, is the store."""
    runs = 300
    name = f"t{uuid.uuid4().hex[:12]}"
    started = [
        _start_driver(tmp_path, PG_ADMIN_URL, name, str(i), runs, first_slow=runs, backend="local") for i in range(4)
    ]
    engines: list[int] = []
    try:
        for process, _ in started:
            engines.extend(descendants(process.pid))
        for i, (process, _) in enumerate(started):
            process.wait(600)
            log = (tmp_path / f"driver-{i}.log").read_text()
            assert process.returncode == 0 and f"MAP DONE {runs}" in log, log[-3000:]
        received = [line for _, path in started for line in _received(path)]
        assert len(received) == 4 * (runs + 1)  # each map's runs and its parent
        with shoal.Project(tmp_path / "project-0", name=name, database=PG_ADMIN_URL) as project:
            records = project.store.list_runs()
        children = [r for r in records if r.parent is not None]
        assert len(children) == 4 * runs and len({r.uid for r in records}) == len(records) == 4 * runs + 4
        assert all(r.state == "completed" and r.results == {"return": 2 * r.params["x"]} for r in children)
        assert sorted(r.params["x"] for r in children) == sorted(list(range(runs)) * 4)
        _check_recorded(tmp_path / "project-0", PG_ADMIN_URL, name, received)
    finally:
        for process, _ in started:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(30)
        kill_by_pid(engines)
