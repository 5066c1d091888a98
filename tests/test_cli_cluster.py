"""``shoal cluster status`` run for real in subprocesses: recorded scaling events from SQLite and
PostgreSQL projects, live workers of a real Dask cluster started here, and unreachable engines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from helpers import free_port

import shoal
from shoal import backends
from shoal.backends import ScalingEvent
from shoal.errors import StoreError

PG_URL = os.environ.get("SHOAL_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
T0 = 1_790_000_000.0  # 2026-09-21 14:13:20 UTC


def cli(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m shoal.cli.main ARGS`` in ``cwd``, with no shoal settings from the environment."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")}
    environ.update({"COLUMNS": "200", **(env or {})})
    return subprocess.run(
        [sys.executable, "-m", "shoal.cli.main", *args], cwd=cwd, env=environ, capture_output=True, text=True, timeout=120
    )


def one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode != 0, proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def _open(root: Path, database: str | None) -> shoal.Project:
    project = shoal.Project(root, database=database)
    try:
        project.store
    except StoreError as exc:
        pytest.skip(str(exc))
    return project


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def folder(request, tmp_path) -> tuple[Path, dict[str, str]]:
    """A project folder with three recorded events (two dask, one local), and the CLI's environment."""
    name = f"p{uuid.uuid4().hex[:10]}"  # unique, so runs on the shared PostgreSQL server never meet
    (tmp_path / "shoal.yaml").write_text(f"name: {name}\n")
    env = {"SHOAL_DATABASE": PG_URL} if request.param == "postgresql" else {}
    with _open(tmp_path, env.get("SHOAL_DATABASE")) as project:
        project.store.record_scaling_events(
            "dask",
            [ScalingEvent(T0, "up", -1, 2, "adaptive: backlog"), ScalingEvent(T0 + 60, "down", -1, -1, "adaptive: 2 idle worker(s) retired")],
        )
        project.store.record_scaling_events("local", [ScalingEvent(T0 + 30, "up", 1, 4, "scale to 4 threads")])
    return tmp_path, env


def test_status_shows_recorded_events_and_explains_embedded_clusters(folder):
    root, env = folder
    proc = cli(root, "cluster", "status", env=env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "embedded clusters live only while a shoal process runs" in lines[0]
    rows = [line for line in lines if "adaptive" in line or "threads" in line]
    assert len(rows) == 3
    assert "down" in rows[0] and "? -> ?" in rows[0]  # newest first; unknown counts shown as "?"
    assert "1 -> 4" in rows[1] and "local" in rows[1]
    assert "? -> 2" in rows[2] and "adaptive: backlog" in rows[2]


def test_status_json_filters_by_backend_name_and_limits(folder):
    root, env = folder
    proc = cli(root, "cluster", "status", "--backend", "dask", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["workers"] == []
    assert [(e["backend"], e["direction"], e["workers_before"], e["workers_after"]) for e in data["events"]] == [
        ("dask", "down", None, None),
        ("dask", "up", None, 2),
    ]
    assert data["events"][1]["time"] == "2026-09-21T14:13:20+00:00"

    limited = json.loads(cli(root, "cluster", "status", "--json", "-n", "1", env=env).stdout)
    assert [e["reason"] for e in limited["events"]] == ["adaptive: 2 idle worker(s) retired"]


def test_status_of_a_running_dask_cluster_lists_its_workers_and_leaves_it_running(tmp_path):
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, processes=False, protocol="tcp", dashboard_address=None) as cluster:
        address = cluster.scheduler_address
        (worker,) = cluster.scheduler_info["workers"]

        proc = cli(tmp_path, "cluster", "status", "--backend", address, "--json")
        assert proc.returncode == 0, proc.stderr
        data = json.loads(proc.stdout)
        assert [(w["address"], w["state"], w["running"]) for w in data["workers"]] == [(worker, "idle", [])]
        assert data["workers"][0]["slots"] >= 1
        assert data["events"] == []

        text = cli(tmp_path, "cluster", "status", "--backend", address.replace("tcp://", "dask://"))
        assert text.returncode == 0, text.stderr
        assert worker in text.stdout and "idle" in text.stdout
        assert "embedded clusters" not in text.stdout

        with Client(address, timeout=10) as client:  # the CLI disconnected without shutting it down
            assert list(client.scheduler_info()["workers"]) == [worker]


def test_events_of_a_watched_dask_backend_reach_the_cli(tmp_path):
    (tmp_path / "shoal.yaml").write_text("name: watched\n")
    backend = backends.get("dask", n_workers=0, processes=False)
    try:
        with shoal.Project(tmp_path) as project:
            project.watch_backend(backend)
            backend.scale(1)
    finally:  # closing the project flushed the event
        backend.close()
    proc = cli(tmp_path, "cluster", "status", "--json")
    assert proc.returncode == 0, proc.stderr
    events = json.loads(proc.stdout)["events"]
    assert [(e["backend"], e["direction"], e["workers_before"], e["workers_after"], e["reason"]) for e in events] == [
        ("dask", "up", 0, 1, "scale")
    ]


@pytest.mark.parametrize("scheme", ["dask", "tcp"])
def test_unreachable_scheduler_is_a_one_line_error(tmp_path, scheme):
    """Bounded by the backend's connect timeout; cli()'s subprocess timeout turns a hang into a failure."""
    proc = cli(tmp_path, "cluster", "status", "--backend", f"{scheme}://127.0.0.1:{free_port()}")
    one_line_error(proc, "127.0.0.1")
    assert proc.stdout == ""


def test_unknown_engine_address_is_a_one_line_error(tmp_path):
    proc = cli(tmp_path, "cluster", "status", "--backend", "nosuchengine://127.0.0.1:1")
    one_line_error(proc, "nosuchengine")
