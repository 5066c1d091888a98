"""Scaling events: stored idempotently on SQLite and PostgreSQL, and persisted from watched backends
(a real local backend and a real embedded Dask cluster) by the project's recorder."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import pytest

import shoal
from shoal import backends
from shoal.backends import ScalingEvent
from shoal.errors import StoreError
from shoal.recorder import backend_label

T0 = 1_790_000_000.0  # a fixed epoch second, so expected times are exact


def wait_for(condition, what: str, timeout: float = 30.0):
    """Poll until ``condition()`` is truthy (a bound against hangs, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            assert value, f"gave up waiting for {what}"
            return value
        time.sleep(0.05)


# -- the store ----------------------------------------------------------------------------------------


def test_record_is_idempotent_and_lists_newest_first(any_project):
    store = any_project.store
    events = [
        ScalingEvent(T0, "up", 0, 2, "adaptive: backlog"),
        ScalingEvent(T0 + 5.25, "down", 2, 1, "adaptive: 1 idle worker(s) retired"),
    ]
    store.record_scaling_events("dask", events)
    store.record_scaling_events("dask", events + events)  # a second pull of the same history

    records = store.list_scaling_events()
    assert [(r.direction, r.workers_before, r.workers_after) for r in records] == [("down", 2, 1), ("up", 0, 2)]
    assert records[0].time.timestamp() == T0 + 5.25
    assert records[0].time.utcoffset().total_seconds() == 0
    assert records[1].reason == "adaptive: backlog"
    assert {r.backend for r in records} == {"dask"}


def test_filter_by_backend_limit_and_unknown_counts(any_project):
    store = any_project.store
    store.record_scaling_events("local", [ScalingEvent(T0, "up", 1, 4, "scale to 4 threads")])
    store.record_scaling_events(
        "tcp://10.0.0.1:8786", [ScalingEvent(T0 + 1, "up", -1, 3, "adaptive: backlog"), ScalingEvent(T0 + 2, "down", -1, -1, "x")]
    )
    remote = store.list_scaling_events(backend="tcp://10.0.0.1:8786")
    assert [(r.workers_before, r.workers_after) for r in remote] == [(None, None), (None, 3)]
    assert [r.backend for r in store.list_scaling_events(backend="local")] == ["local"]
    assert len(store.list_scaling_events(limit=2)) == 2
    assert len(store.list_scaling_events(limit=None)) == 3
    assert store.list_scaling_events(backend="ray") == []


def test_same_time_with_another_reason_is_another_event(any_project):
    store = any_project.store
    store.record_scaling_events("dask", [ScalingEvent(T0, "up", 0, 1, "scale")])
    store.record_scaling_events("dask", [ScalingEvent(T0, "up", 0, 1, "adaptive: backlog")])
    store.record_scaling_events("local", [ScalingEvent(T0, "up", 0, 1, "scale")])
    assert len(store.list_scaling_events(limit=None)) == 3


def test_projects_do_not_see_each_others_events(any_project, tmp_path):
    any_project.store.record_scaling_events("dask", [ScalingEvent(T0, "up", 0, 1, "scale")])
    with shoal.Project(tmp_path, name=f"other{uuid.uuid4().hex[:8]}", database=any_project.database) as other:
        assert other.store.list_scaling_events() == []


@pytest.mark.parametrize(
    "event, fragment",
    [
        (ScalingEvent(T0, "sideways", 0, 1, "x"), "direction"),
        (ScalingEvent("yesterday", "up", 0, 1, "x"), "time"),  # type: ignore[arg-type]
        (ScalingEvent(float("nan"), "up", 0, 1, "x"), "time"),
        (ScalingEvent(T0, "up", 1.5, 2, "x"), "worker count"),  # type: ignore[arg-type]
    ],
)
def test_malformed_events_are_refused(project, event, fragment):
    with pytest.raises(StoreError, match=fragment):
        project.store.record_scaling_events("dask", [event])
    assert project.store.list_scaling_events() == []


def test_backend_label_is_address_or_name():
    assert backend_label(backends.get("local")) == "local"
    remote = backends.get("dask://10.0.0.1:8786")  # never connects: only constructed
    assert backend_label(remote) == "tcp://10.0.0.1:8786"
    remote.close()


# -- watched backends -----------------------------------------------------------------------------


def test_watched_dask_backend_events_are_persisted_and_logged_on_flush(any_project, caplog):
    backend = backends.get("dask", n_workers=0, processes=False)
    try:
        any_project.watch_backend(backend)
        any_project.watch_backend(backend)  # the runner calls it for every driver: idempotent
        with caplog.at_level(logging.INFO, logger="shoal.scaling"):
            backend.scale(1)
            any_project.flush()
        records = any_project.store.list_scaling_events()
        assert [(r.backend, r.direction, r.workers_before, r.workers_after, r.reason) for r in records] == [
            ("dask", "up", 0, 1, "scale")
        ]
        assert any("dask scaled up: 0 -> 1 workers (scale)" in m for m in caplog.messages)

        caplog.clear()
        with caplog.at_level(logging.INFO, logger="shoal.scaling"):
            any_project.flush()  # nothing new: nothing stored or logged again
        assert not any("scaled" in m for m in caplog.messages)
        assert len(any_project.store.list_scaling_events()) == 1

        wait_for(lambda: len(backend.workers()) == 1, "the worker to join")  # scale() counts joined workers
        backend.scale(0)
        any_project.flush()
        assert [(r.direction, r.workers_after) for r in any_project.store.list_scaling_events()] == [
            ("down", 0),
            ("up", 1),
        ]
    finally:
        backend.close()


def test_recorder_thread_pulls_events_when_it_writes_a_batch(project, monkeypatch):
    """No flush here: the batch of a finished run is what brings the event to the database."""
    monkeypatch.setattr("shoal.recorder.IDLE_EXIT", 120.0)  # so the idle-time pull cannot be what stored it
    backend = backends.get("local")
    try:
        project.watch_backend(backend)
        backend.scale(3)
        project.store.create_runs([{"uid": "r1", "function": "f", "function_hash": "0" * 64}])
        done = threading.Event()
        project.recorder.finished("r1", {"state": "completed"}, [], lambda problem: done.set())
        assert done.wait(30)
        records = wait_for(project.store.list_scaling_events, "the scaling event written by the recorder thread")
        assert [(r.backend, r.direction, r.workers_before, r.workers_after) for r in records] == [("local", "up", 1, 3)]
        assert project.store.get_run("r1").state == "completed"
    finally:
        backend.close()


def test_closed_project_stops_watching(project):
    backend = backends.get("local")
    try:
        project.watch_backend(backend)
        backend.scale(2)
        project.close()  # flushes: the first event is stored
        backend.scale(5)
        project.flush()  # a closed project's recorder is gone: nothing to pull
        assert [r.workers_after for r in project.store.list_scaling_events()] == [2]
    finally:
        backend.close()


def test_events_are_persisted_at_interpreter_exit(tmp_path):
    """A script that never flushes: the recorder's atexit flush stores the last events."""
    script = tmp_path / "script.py"
    script.write_text(
        textwrap.dedent(
            """
            import shoal
            from shoal import backends

            project = shoal.Project(".", name="exit")
            backend = backends.get("local")
            project.watch_backend(backend)
            backend.scale(2)
            backend.scale(4)
            """
        )
    )
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")}
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=environ, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    with shoal.Project(tmp_path, name="exit") as project:
        records = project.store.list_scaling_events()
    assert [(r.backend, r.workers_before, r.workers_after) for r in records] == [("local", 2, 4), ("local", 1, 2)]
