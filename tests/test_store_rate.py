"""perf/store_rate.py runs end to end at a small size and writes what it measured: every figure a
positive rate, the store and the floor beside each other, one driver and several."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

from conftest import postgres_available

PERF = pathlib.Path(__file__).resolve().parent.parent / "perf"


def test_store_rate_quick(tmp_path):
    databases = "sqlite" if postgres_available() else "sqlite,postgresql"
    done = subprocess.run(
        [sys.executable, str(PERF / "store_rate.py"), "--quick", "--no-map", "--runs", "300", "--databases", databases,
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, f"{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    report = json.loads((tmp_path / "store_rate.json").read_text())
    assert (tmp_path / "store_rate.png").stat().st_size > 0
    rows = report["rows"]
    assert {(r["database"], r["mode"], r["drivers"]) for r in rows} == {
        (database, mode, drivers)
        for database in databases.split(",")
        for mode in ("floor", "store")
        for drivers in (1, 2)
    }
    assert all(r["runs"] == 300 * r["drivers"] and r["runs_per_s"] > 0 for r in rows)
    assert "floor rate / store rate" in done.stdout
