"""The perf scripts whose ``--quick`` run takes seconds still run end to end and write their results.

perf/dispatch.py and perf/tuning.py start a Dask and a Ray cluster each (over 20 s even with
``--quick``), so they are left to the lead's measurement runs; the harness they share is covered here.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

PERF = pathlib.Path(__file__).resolve().parent.parent / "perf"


def quick(script: str, out: pathlib.Path, *extra: str) -> dict:
    """Run ``perf/<script>.py --quick`` into ``out``; its JSON report."""
    done = subprocess.run([sys.executable, str(PERF / f"{script}.py"), "--quick", "--out", str(out), *extra],
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, f"{script} --quick failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    assert (out / f"{script}.png").stat().st_size > 0
    report = json.loads((out / f"{script}.json").read_text())
    assert report["script"] == script and report["options"]["quick"] is True
    assert report["machine"]["cores"] >= 1 and len(report["machine"]["load_average_end"]) == 3
    return report


def test_journal_lock_quick(tmp_path):
    report = quick("journal_lock", tmp_path)
    assert {row["lock"] for row in report["rows"]} == {"shoal queued", "optuna symlink", "optuna open"}
    assert all(row["writers"] == 2 and row["appends_per_s"] > 0 and row["p95_ms"] >= row["median_ms"] > 0 for row in report["rows"])


def test_tuning_storage_quick(tmp_path):
    report = quick("tuning_storage", tmp_path)
    assert {row["storage"] for row in report["rows"]} == {"sqlite", "journal"}
    assert all(row["trials"] == 2 * report["trials_per_writer"] and row["errors"] == 0 for row in report["rows"])


def test_local_overhead_quick(tmp_path):
    report = quick("local_overhead", tmp_path)
    assert report["options"]["runs"] == 100
    assert report["recorded_runs"] >= 2 * 100  # fn.run and fn.map children, every one recorded


def test_report_quick(tmp_path):
    report = quick("report", tmp_path, "--storages", "memory")
    summary = report["memory"]
    assert summary["trials"] == 3 and summary["steps"] == 20
    assert all(summary[system]["us_per_report"] > 0 for system in ("optuna", "shoal ctx.report", "shoal trial.report"))


def test_import_time_quick(tmp_path):
    report = quick("import_time", tmp_path)
    assert len(report["all_s"]) == 3 and report["engines_loaded"] == []


def test_quick_keeps_flags_given(tmp_path):
    """--quick replaces only the defaults: a size given on the command line stays."""
    report = quick("tuning_storage", tmp_path, "--trials-per-writer", "4")
    assert report["trials_per_writer"] == 4 and report["options"]["writers"] == [2]


def test_harness_refuses_bad_repeats(tmp_path):
    done = subprocess.run([sys.executable, str(PERF / "journal_lock.py"), "--out", str(tmp_path), "--repeats", "0"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--repeats must be >= 1" in done.stderr


def test_serving_quick_without_ray(tmp_path):
    report = quick("serving", tmp_path, "--systems", "uvicorn,shoal-local")
    assert set(report["systems"]) == {"uvicorn", "shoal-local"}
    assert report["ratios"]["local_throughput"] > 0
