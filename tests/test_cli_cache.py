"""``shoal run``'s cache flags (``--cache/--no-cache``, ``--refresh``, ``--cache-version``,
``--cache-expires``, ``--cache-ignore``) for functions and pipelines, through the real command line
in subprocesses against a real SQLite project: every check reads what the CLI printed and stored."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import shoal

from helpers import cli

STEPS = textwrap.dedent(
    """
    def count(x: int = 1, verbose: bool = False):
        return {"double": 2 * x}


    def prep(ctx, rows: int = 3):
        ctx.log_artifact("dataset", list(range(rows)))


    def total(dataset):
        return {"total": sum(dataset)}
    """
)

FLOWS = textwrap.dedent(
    """
    import shoal

    prep = shoal.Function.from_file("steps.py", handler="prep")
    total = shoal.Function.from_file("steps.py", handler="total")


    @shoal.pipeline
    def flow(rows: int = 3):
        data = prep.submit({"rows": rows})
        return total.submit(inputs={"dataset": data.output("dataset")})
    """
)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "steps.py").write_text(STEPS)
    (tmp_path / "flows.py").write_text(FLOWS)
    return tmp_path


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["steps.py:count", "--no-cache", "--refresh"], "--refresh"),
        (["steps.py:count", "--no-cache", "--cache-version", "2"], "--cache-version"),
        (["steps.py:count", "--cache-expires", "-1"], "--cache-expires"),
        (["steps.py:count", "--cache", "--cache-ignore", "nope"], "nope"),
        (["flows.py:flow", "--cache-ignore", "rows"], "--cache-ignore"),
    ],
)
def test_bad_cache_flags_exit_2_naming_the_flag_and_record_nothing(folder, args, named):
    proc = cli(folder, "run", *args)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert named in proc.stderr
    project = shoal.Project(folder)
    try:
        assert project.store.list_runs() == []
    finally:
        project.close()


def run_json(folder: Path, *args: str) -> dict:
    """``shoal run ARGS --json``: it must succeed; its run record."""
    proc = cli(folder, "run", *args, "--json")
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    return json.loads(proc.stdout)


def test_cache_reuses_a_function_run_and_refresh_runs_it_again(folder):
    first = run_json(folder, "steps.py:count", "--param", "x=2", "--cache")
    assert first["state"] == "completed" and first["results"] == {"double": 4}
    again = run_json(folder, "steps.py:count", "--param", "x=2", "--cache")
    assert again["state"] == "cached" and again["cached_from"] == first["uid"] and again["results"] == {"double": 4}
    plain = run_json(folder, "steps.py:count", "--param", "x=2")  # off by default for a function
    assert plain["state"] == "completed" and not plain.get("cached_from")
    fresh = run_json(folder, "steps.py:count", "--param", "x=2", "--refresh")  # runs, and is reused next
    assert fresh["state"] == "completed"
    after = run_json(folder, "steps.py:count", "--param", "x=2", "--cache")
    assert after["state"] == "cached" and after["cached_from"] == fresh["uid"]


def test_cache_version_and_ignored_parameters_shape_the_key(folder):
    base = run_json(folder, "steps.py:count", "--param", "x=3", "--cache-ignore", "verbose")
    same = run_json(folder, "steps.py:count", "--param", "x=3", "--param", "verbose=true", "--cache-ignore", "verbose")
    assert same["state"] == "cached" and same["cached_from"] == base["uid"]
    bumped = run_json(folder, "steps.py:count", "--param", "x=3", "--cache-ignore", "verbose", "--cache-version", "2")
    assert bumped["state"] == "completed"
    fresh_enough = run_json(folder, "steps.py:count", "--param", "x=3", "--cache-version", "2", "--cache-ignore",
                            "verbose", "--cache-expires", "3600")
    assert fresh_enough["state"] == "cached" and fresh_enough["cached_from"] == bumped["uid"]


def test_a_pipeline_caches_its_steps_unless_told_not_to(folder):
    first = run_json(folder, "flows.py:flow")
    assert first["state"] == "completed" and first["results"]["steps"] == {"completed": 2}
    second = run_json(folder, "flows.py:flow")
    assert second["state"] == "completed" and second["results"]["steps"] == {"cached": 2}
    off = run_json(folder, "flows.py:flow", "--no-cache")
    assert off["results"]["steps"] == {"completed": 2}
