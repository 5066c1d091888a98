"""The backend conformance suite: the assertions every engine must pass, shipped with the library.

A user who switches engines gets the same runs, results, artifacts, errors and records; this suite
is how an engine shows it. Subclass ``BackendConformance`` in a test module and give it a
``backend`` fixture (see ``shoal.testing``). Handlers live in a file written to the test's temporary
folder, outside sys.path, so remote workers can only run them from the code shoal ships.

Markers and counters are files in pytest's ``tmp_path``: the suite assumes workers see the driver's
file system, as every engine on one machine does.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

import shoal
from shoal.backends import Backend

from .handlers import MAIN_SCRIPT, VERSIONED, handler_functions
from .waiting import wait_for

__all__ = ["BackendConformance"]


def scratch_project(folder: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[shoal.Project]:
    """A fresh project (SQLite + local artifact folder) in ``folder``, made the working folder, with
    the environment's database and artifact settings unset; closed when the test ends."""
    monkeypatch.chdir(folder)
    monkeypatch.delenv("SHOAL_DATABASE", raising=False)
    monkeypatch.delenv("SHOAL_ARTIFACTS", raising=False)
    project = shoal.Project(folder, name="test")
    yield project
    project.close()


def capacity(backend: Backend) -> int:
    """Task slots of the workers that accept work now."""
    return sum(w.slots for w in backend.workers() if w.state in ("idle", "busy"))


def settle(backend: Backend, slots: int) -> None:
    """Wait until an engine has ``slots`` slots up (workers start asynchronously); threads of an
    in-process backend are made on demand."""
    if not backend.in_process:
        wait_for(lambda: capacity(backend) >= slots, what=f"{slots} slots on {backend.name}")


def stops_single_batched_runs(backend: Backend) -> bool:
    """True when cancelling one run of a batch reaches it: the backend does not batch, or it
    implements ``stop_batched_run`` (the contract's default cannot)."""
    return not backend.batches or type(backend).stop_batched_run is not Backend.stop_batched_run


def spy_on_batches(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Sizes of the batches the runner hands to ``backend`` (the real method still runs them)."""
    sizes: list[int] = []
    real = backend.submit_batch

    def spy(tasks, on_start=None):
        sizes.append(len(tasks))
        return real(tasks, on_start)

    monkeypatch.setattr(backend, "submit_batch", spy)
    return sizes


def database_file_bytes(project: shoal.Project) -> int:
    path = Path(project.database.removeprefix("sqlite:///"))
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


class BackendConformance:
    """Backend conformance tests; a subclass named ``Test...`` provides the ``backend`` fixture.

    Override ``project`` for a store the engine's workers can reach, and ``backend_address`` when
    a script in another process cannot reach the engine by ``backend.address`` or by name.
    """

    @pytest.fixture
    def project(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
        """A fresh project (SQLite + local artifact folder) in the test's temporary folder."""
        yield from scratch_project(tmp_path, monkeypatch)

    @pytest.fixture
    def fn(self, tmp_path: Path) -> Callable[..., shoal.Function]:
        """``fn(handler, **options)``: a Function from the handlers file in the test folder."""
        return handler_functions(tmp_path)

    def backend_address(self, backend: Backend) -> str:
        """What a script in another process passes as ``backend=`` to reach the same engine: the
        backend's ``address``, or its name for an in-process backend (that process makes its own)."""
        address = getattr(backend, "address", None)
        if address:
            return str(address)
        if backend.in_process:
            return backend.name
        pytest.skip(f"no address to reach the {backend.name} backend from another process")

    # -- params, results, logs, artifacts --------------------------------------------------------
    def test_params_and_results(self, backend, project, fn):
        run = fn("add").run({"x": 3, "y": 0.5}, backend=backend, project=project, watch=False)
        assert run.state == "completed", run.error
        assert run.results["sum"] == 3.5
        assert run.params == {"x": 3, "y": 0.5}
        assert run.backend == backend.name and run.attempts == 1 and run.error is None
        assert "adding 3 0.5" in run.logs
        assert run.started_at is not None and run.ended_at >= run.started_at
        assert (run.results["pid"] == os.getpid()) is backend.in_process  # remote engines run elsewhere
        assert project.runs.get(run.uid) == run

    def test_context_logs_and_artifacts_written_on_the_worker(self, backend, project, fn):
        run = fn("logs_everything").run({"n": 3}, backend=backend, project=project, watch=False)
        assert run.state == "completed", run.error
        assert run.results["accuracy"] == 0.75
        assert run.metrics == {"loss": [[0, 1.0], [1, 0.5], [2, 1.0 / 3]]}
        assert "through print" in run.logs and "through the logger" in run.logs
        assert set(run.artifacts) == {"weights", "notes"}

        stored = project.runs.get(run.uid)
        assert stored == run
        np.testing.assert_array_equal(stored.output("weights"), np.arange(3, dtype=np.float64))
        assert stored.output("notes") == "written on the worker"
        artifacts_root = Path(project.artifacts_url.removeprefix("file://")).resolve()
        for artifact in stored.artifacts.values():
            path = Path(artifact.url.removeprefix("file://")).resolve()
            assert path.is_file() and artifacts_root in path.parents

    # -- failures, retries, timeouts -------------------------------------------------------------
    def test_handler_exception_with_traceback(self, backend, project, fn):
        run = fn("fails").run(backend=backend, project=project, watch=False)
        assert run.state == "failed"
        assert run.error["type"] == "ValueError"
        assert run.error["message"] == "broken on purpose"
        assert 'raise ValueError("broken on purpose")' in run.error["traceback"]
        assert "handlers.py" in run.error["traceback"]
        assert run.results == {"before": 1}  # what it logged before failing is kept
        assert "about to fail" in run.logs
        assert project.runs.get(run.uid) == run
        with pytest.raises(shoal.RunFailedError, match="broken on purpose"):
            run.raise_for_state()

    def test_retry_of_a_flaky_handler(self, backend, project, fn, tmp_path):
        marker = str(tmp_path / "marker")
        run = fn("flaky", retries=1).run({"marker": marker}, backend=backend, project=project, watch=False)
        assert run.state == "completed", run.error
        assert run.attempts == 2
        assert run.results == {"attempt": 2}
        assert "first attempt fails" in run.logs and "second attempt works" in run.logs
        assert project.runs.get(run.uid) == run

    def test_timeout(self, backend, project, fn):
        run = fn("sleeper", timeout=0.5).run({"seconds": 20}, backend=backend, project=project, watch=False)
        assert run.state == "failed"
        assert run.error["type"] == "TimeoutError"
        assert "timeout" in run.error["message"]
        assert run.results == {"before": 1}
        assert "going to sleep" in run.logs
        assert project.runs.get(run.uid) == run

    # -- cancellation ----------------------------------------------------------------------------
    def test_cancel_pending_and_running_runs(self, backend, project, fn, tmp_path):
        slots = backend.slots
        settle(backend, slots)
        looper = fn("looper")
        markers = [tmp_path / f"started-{i}" for i in range(slots)]
        running = [looper.submit({"marker": str(m)}, backend=backend, project=project) for m in markers]
        for marker in markers:
            wait_for(marker.exists, what=f"{marker.name}")
        wait_for(lambda: all(h.state == "running" for h in running), what="running state")
        busy = {uid for worker in backend.workers() for uid in worker.running}
        assert {h.uid for h in running} <= busy

        never = tmp_path / "never"
        pending = looper.submit({"marker": str(never)}, backend=backend, project=project)
        assert pending.state == "pending"  # every slot is taken
        assert pending.cancel() is True
        assert all(h.cancel() is True for h in running)

        cancelled = pending.result(60)
        assert cancelled.state == "cancelled" and cancelled.error["type"] == "CancelledError"
        assert cancelled.started_at is None and cancelled.attempts == 0
        for handle in running:
            run = handle.result(60)
            assert run.state == "cancelled" and run.error["type"] == "CancelledError", run.error
            assert run.started_at is not None
            # The marker is written after the first metric: stopped before the end, what it logged is kept.
            assert 1 <= len(run.metrics.get("step", ())) < 3000, (run.error, run.attempts)
            assert project.runs.get(run.uid) == run
        assert not never.exists()  # the pending run never started
        assert project.runs.get(pending.uid) == cancelled
        assert {r.uid for r in project.runs.list(state="cancelled")} == {pending.uid} | {h.uid for h in running}
        assert handle.cancel() is False  # already finished

    # -- map -------------------------------------------------------------------------------------
    def test_map_keeps_order_and_survives_a_failed_child(self, backend, project, fn):
        count = 6
        # Later items finish first, so the order of the results is the order of the input.
        items = [{"i": i, "fail_on": 2, "delay": 0.05 * (count - i)} for i in range(count)]
        runs = fn("pick").map(items, backend=backend, project=project)
        assert [r.iteration for r in runs] == list(range(count))
        assert [r.state for r in runs] == ["completed"] * 2 + ["failed"] + ["completed"] * 3
        assert [r.results.get("square") for r in runs] == [0, 1, None, 9, 16, 25]
        assert runs[2].error["type"] == "ValueError" and runs[2].error["message"] == "item 2 fails"
        parent = project.runs.get(runs[0].parent)
        assert parent.state == "failed" and parent.error["type"] == "MapError"
        assert "iteration 2" in parent.error["message"]
        assert parent.results == {"completed": 5, "failed": 1, "cancelled": 0}
        children = project.runs.list(parent=parent.uid)
        assert sorted(children, key=lambda r: r.iteration) == runs

    # -- where the code comes from ---------------------------------------------------------------
    def test_functions_defined_in_main(self, backend, tmp_path):
        script = tmp_path / "script.py"
        script.write_text(MAIN_SCRIPT)
        folder = tmp_path / "project"
        folder.mkdir()
        done = subprocess.run(
            [sys.executable, str(script), self.backend_address(backend), str(folder)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        report = json.loads(done.stdout.strip().splitlines()[-1])
        assert report["states"] == ["completed"] * 4, report["errors"]
        assert report["double"] == 42 and report["triple"] == 15 and report["mapped"] == [2, 4]
        assert report["backend"] == backend.name
        # In-process runs call the live function; workers get it by value (as Ray ships ``__main__``
        # functions), never from running the script's text.
        assert report["module"] == "__main__"

    def test_file_outside_sys_path_runs_from_the_captured_code(self, backend, project, tmp_path):
        folder = tmp_path / f"elsewhere_{uuid.uuid4().hex[:6]}"
        folder.mkdir()
        path = folder / "versioned.py"
        path.write_text(VERSIONED.format(version=1))
        where = shoal.Function.from_file(path, "where")
        path.write_text(VERSIONED.format(version=2))  # a worker reading the file would see version 2
        run = where.run(backend=backend, project=project, watch=False)
        assert run.state == "completed", run.error
        assert run.results["version"] == 1
        assert run.results["module"].startswith("shoal_code_")  # built from the code, not imported
        assert run.results["on_sys_path"] is False

    # -- requirements ----------------------------------------------------------------------------
    def test_requirements_installed_pass_and_missing_ones_fail_before_recording(self, backend, project, fn):
        run = fn("add", requirements=["numpy"]).run({"x": 1}, backend=backend, project=project, watch=False)
        assert run.state == "completed", run.error
        missing = "surely-not-a-package-xyz"
        with pytest.raises(shoal.BackendError, match=missing):
            fn("add", requirements=[missing]).run({"x": 1}, backend=backend, project=project)
        with pytest.raises(shoal.BackendError, match=missing):
            fn("pick", requirements=["numpy", missing]).map([{"i": 1}], backend=backend, project=project)
        assert project.store.count_runs() == 1  # nothing recorded for the refused runs

    # -- large data ------------------------------------------------------------------------------
    def test_large_input_and_output_bypass_the_database(self, backend, project, fn):
        data = np.random.default_rng(0).random(50 * 2**20 // 8)  # 50 MB of float64
        run = fn("big").run({"scale": 2.0}, inputs={"data": data}, backend=backend, project=project, watch=False)
        assert run.state == "completed", run.error
        assert run.results == {"sum": float(data.sum()), "shape": [data.size]}
        scaled = project.runs.get(run.uid).output("scaled")
        assert scaled.shape == data.shape and np.array_equal(scaled, data * 2.0)
        del scaled

        url = run.inputs["data"]
        assert isinstance(url, str) and Path(url.removeprefix("file://")).stat().st_size >= data.nbytes
        assert Path(run.artifacts["scaled"].url.removeprefix("file://")).stat().st_size >= data.nbytes
        with project.store.engine.connect() as connection:
            query = sa.text("select * from runs where uid = :uid")
            row = connection.execute(query, {"uid": run.uid}).mappings().one()
            artifact_rows = connection.execute(sa.text("select * from artifacts")).mappings().all()
        assert len(str(row["inputs"])) < 1000  # a URL, not the array
        assert sum(len(str(value)) for value in row.values()) < 20_000
        assert all(sum(len(str(v)) for v in r.values()) < 5_000 for r in artifact_rows)
        if project.database.startswith("sqlite:///"):
            assert database_file_bytes(project) < 5 * 2**20

    # -- batches of short runs -------------------------------------------------------------------
    def test_runs_of_a_batch_keep_their_own_outcomes_logs_and_retries(self, backend, project, fn, monkeypatch):
        sizes = spy_on_batches(backend, monkeypatch)
        count = 40
        items = [{"i": i, "fail_on": 7, "flaky_on": 11} for i in range(count)]
        runs = fn("tagged", retries=1).map(items, backend=backend, project=project, batch_size=6)
        assert sizes == ([6] * 6 + [4] if backend.batches else [])  # in-process runs are never batched
        assert [r.iteration for r in runs] == list(range(count))
        assert [r.state for r in runs] == ["failed" if i == 7 else "completed" for i in range(count)]
        assert [r.results.get("square") for r in runs] == [None if i == 7 else i * i for i in range(count)]
        assert runs[7].error["type"] == "ValueError" and runs[7].attempts == 2  # retried on its own
        assert runs[11].attempts == 2  # the transient failure was retried
        assert all(r.attempts == 1 for i, r in enumerate(runs) if i not in (7, 11))
        for i, run in enumerate(runs):
            assert set(re.findall(r"item (\d+) says hello", run.logs)) == {str(i)}  # its own output only
            assert run.started_at is not None and run.ended_at >= run.started_at
            if run.state == "completed":
                assert run.metrics["i"] == [[0, i]]
        assert sorted(project.runs.list(parent=runs[0].parent), key=lambda r: r.iteration) == runs
        parent = project.runs.get(runs[0].parent)
        assert parent.results == {"completed": count - 1, "failed": 1, "cancelled": 0}

    def test_short_runs_are_batched_automatically_long_ones_are_not(self, backend, project, fn, monkeypatch):
        from shoal import batching

        sizes = spy_on_batches(backend, monkeypatch)
        with monkeypatch.context() as patch:
            # What the decision needs, not a quiet machine: the first runs' durations (a worker that
            # starts cold on a busy machine may take longer than PROBE_WAIT to run one), and runs far
            # shorter than a batch's work however slow the machine is.
            patch.setattr(batching, "PROBE_WAIT", 300.0)
            patch.setattr(batching, "BATCH_SECONDS", 1.0)
            runs = fn("square").map([{"x": i} for i in range(300)], backend=backend, project=project)
        assert [r.results["square"] for r in runs] == [i * i for i in range(300)]
        if backend.batches:  # one run per slot probes the duration, the rest travel in batches
            assert max(sizes) > 1 and sum(sizes) < 300, sizes
        else:
            assert sizes == []
        sizes.clear()
        naps = fn("nap").map([{"seconds": 0.3}] * 16, backend=backend, project=project)
        assert [r.state for r in naps] == ["completed"] * 16
        assert sizes == []  # runs of 0.3 s are worth a task each (a busy machine only makes them longer)

    def test_cancelling_one_run_of_a_batch(self, backend, project, fn):
        from shoal.runner import open_driver

        driver = open_driver(fn("nap"), backend, project)
        driver.save_function()
        params = [{"seconds": 0.2} for _ in range(8)]
        records = [driver.new_record(p, {}, iteration=i) for i, p in enumerate(params)]
        project.store.create_runs(records)
        handles = driver.launch_many(records, {}, params, batch_size=4)
        delivered = handles[3].cancel()  # the last run of the first batch: it has not started yet
        runs = [handle.result(120) for handle in handles]
        if stops_single_batched_runs(backend):
            assert delivered is True and runs[3].state == "cancelled"
            assert runs[3].error["type"] == "CancelledError"
        else:  # the engine cannot tell a task to skip one of its runs: it just runs
            assert delivered is False and runs[3].state == "completed"
        assert [r.state for i, r in enumerate(runs) if i != 3] == ["completed"] * 7
        assert project.runs.get(runs[3].uid).state == runs[3].state

    def test_batch_size_must_be_auto_or_a_whole_number(self, backend, project, fn):
        for bad in (0, -1, 2.5, "big", True):
            with pytest.raises(shoal.ParamError, match="batch_size must be 'auto' or a whole number"):
                fn("square").map([{"x": 1}], backend=backend, project=project, batch_size=bad)
        assert project.runs.list() == []  # nothing recorded

    # -- concurrency -----------------------------------------------------------------------------
    @pytest.mark.parametrize("bound", [1, 2])
    def test_concurrency_never_exceeds_max_replicas(self, backend, project, fn, tmp_path, bound):
        counter = tmp_path / "counter.json"
        counter.write_text("{}")
        before = backend.slots
        # A backend object is used as given; the runner adapts only backends it resolves by name,
        # so adapt it here to the function's replicas as the runner would.
        backend.adapt(bound, bound)
        try:
            settle(backend, bound)
            concurrent = fn("concurrent", replicas=(bound, bound))
            items = [{"counter": str(counter), "pair": bound} for _ in range(3 * bound)]
            runs = concurrent.map(items, backend=backend, project=project)
        finally:
            backend.adapt(before, before)
            settle(backend, before)
        assert all(r.state == "completed" for r in runs), [r.error for r in runs]
        state = json.loads(counter.read_text())
        assert state["now"] == 0
        assert state["peak"] == bound  # reached, never exceeded
