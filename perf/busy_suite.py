"""The test suite on a busy machine (issue 18): the whole suite N times while one other process
keeps a core busy, as CI's shared 2-core machine may be.

    python perf/busy_suite.py [--runs 3] [--out DIR] [-- PYTEST ARGS...]

The busy process (a Python loop) is started by this script and ended by its PID when the runs are
done, also on Ctrl-C or an error. Each run is ``python -m pytest -q -p no:cacheprovider`` plus the
arguments after ``--`` (default: the whole suite), in the repository's root. Per run it records the
passed / failed / error / skipped counts, the ids of the tests that failed, the duration, the load
average (sampled every few seconds) and the CPU seconds the busy process used meanwhile (the proof
that it was busy). Writes ``busy_suite.json`` and prints one line per run and the failures.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from typing import Any

import psutil
from harness import Session, options

ROOT = pathlib.Path(__file__).resolve().parent.parent
LOAD_EVERY = 5.0  # seconds between load-average samples during a run
BUSY_LOOP = "while True:\n    pass\n"
SUMMARY_LINE = re.compile(r"^(FAILED|ERROR) (\S+)")


class BusyCore:
    """One child process spinning on a core, from ``start`` until ``stop`` (by its PID)."""

    def __init__(self) -> None:
        self.process: subprocess.Popen | None = None

    def start(self) -> int:
        self.process = subprocess.Popen([sys.executable, "-c", BUSY_LOOP], stdin=subprocess.DEVNULL)
        return self.process.pid

    def cpu_seconds(self) -> float:
        """CPU time the busy process has used so far (0 once it is gone)."""
        try:
            times = psutil.Process(self.pid).cpu_times()
        except psutil.NoSuchProcess:
            return 0.0
        return times.user + times.system

    @property
    def pid(self) -> int:
        assert self.process is not None, "started first"
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(30)


class LoadSampler:
    """The 1-minute load average every ``LOAD_EVERY`` s while a run goes on."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="load-sampler", daemon=True)

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(os.getloadavg()[0])

    def _loop(self) -> None:
        while True:
            self.samples.append(os.getloadavg()[0])
            if self._stop.wait(LOAD_EVERY):
                return


def counts_from_junit(path: pathlib.Path) -> dict[str, int]:
    """Tests, failures, errors and skipped of a pytest JUnit XML report (all its suites)."""
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    for suite in suites:
        for key in totals:
            totals[key] += int(suite.get(key, 0))
    return totals


def failed_ids(output: str) -> list[str]:
    """Node ids of the ``FAILED`` / ``ERROR`` lines of pytest's short summary (``-ra``)."""
    found = []
    for line in output.splitlines():
        match = SUMMARY_LINE.match(line.strip())
        if match:
            found.append(f"{match.group(1)} {match.group(2)}")
    return found


def run_suite(index: int, pytest_args: list[str], busy: BusyCore, scratch: pathlib.Path) -> dict[str, Any]:
    """One run of the suite; what it gave."""
    report = scratch / f"run-{index}.xml"
    log = scratch / f"run-{index}.log"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}", *pytest_args]
    cpu_before = busy.cpu_seconds()
    began = time.monotonic()
    with LoadSampler() as load, open(log, "w") as output:
        exit_code = subprocess.call(command, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT)
    seconds = time.monotonic() - began
    text = log.read_text(errors="replace")
    counts = counts_from_junit(report) if report.exists() else {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    failed = counts["failures"]
    errors = counts["errors"]
    return {
        "run": index,
        "exit_code": exit_code,
        "seconds": round(seconds, 1),
        "passed": counts["tests"] - failed - errors - counts["skipped"],
        "failed": failed,
        "errors": errors,
        "skipped": counts["skipped"],
        "failed_ids": failed_ids(text),
        "load_average_1min": {
            "mean": round(sum(load.samples) / len(load.samples), 2),
            "max": round(max(load.samples), 2),
            "samples": len(load.samples),
        },
        "busy_cpu_seconds": round(busy.cpu_seconds() - cpu_before, 1),
        "busy_alive_at_end": busy.alive(),
        "log": str(log),
        "tail": text.splitlines()[-1] if text.strip() else "",
    }


def add_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs", type=int, default=3, help="times the suite runs (default 3)")
    parser.add_argument("pytest_args", nargs="*", help="after --: arguments for pytest (default: the whole suite)")


def main(argv: list[str] | None = None) -> int:
    args = options(__doc__, {"runs": 1}, add_flags, repeats=1, argv=argv)
    if args.runs < 1:
        args.parser.error("--runs must be >= 1")
    session = Session("busy_suite", args)
    scratch = pathlib.Path(tempfile.mkdtemp(prefix="shoal-busy-suite-"))
    busy = BusyCore()
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the busy process on TERM too
    runs: list[dict[str, Any]] = []
    interrupted = False
    try:
        print(
            f"busy process pid {busy.start()}; pytest {' '.join(args.pytest_args) or '(whole suite)'}; "
            f"logs in {scratch}",
            flush=True,
        )
        for index in range(1, args.runs + 1):
            run = run_suite(index, args.pytest_args, busy, scratch)
            runs.append(run)
            print(
                f"run {index}: {run['passed']} passed, {run['failed']} failed, {run['errors']} errors, "
                f"{run['skipped']} skipped in {run['seconds']} s; load 1-min mean {run['load_average_1min']['mean']} "
                f"max {run['load_average_1min']['max']}; busy process used {run['busy_cpu_seconds']} CPU s",
                flush=True,
            )
            for test in run["failed_ids"]:
                print(f"    {test}", flush=True)
    except KeyboardInterrupt:  # Ctrl-C: the pytest run was ended with it; keep the runs done
        interrupted = True
        print(f"interrupted during run {len(runs) + 1}", flush=True)
    finally:
        busy.stop()
        signal.signal(signal.SIGTERM, previous)
    failing = sorted({test for run in runs for test in run["failed_ids"]})
    session.write(
        {
            "pytest_args": args.pytest_args,
            "busy_pid": busy.pid,
            "interrupted": interrupted,
            "runs": runs,
            "failing_tests": failing,
        }
    )
    total = sum(r["failed"] + r["errors"] for r in runs)
    print(f"{len(runs)} run(s), {total} failure(s) in all" + (": " + ", ".join(failing) if failing else ""), flush=True)
    return 130 if interrupted else (1 if total else 0)


if __name__ == "__main__":
    sys.exit(main())
