"""What every perf script shares, written once: the common flags, repeats with their fastest and
median, the machine's state around a measurement, the JSON and PNG under ``perf/results/``, and
the printed ratios.

Scripts import it as ``from harness import ...`` (they run as ``python perf/<name>.py``, which puts
``perf/`` on the path) and call ``options(...)`` for their flags, ``Session`` to record the
machine and write the results, ``repeat`` for timings and ``ratio_line`` for what they print.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def options(doc: str | None, quick: dict[str, Any], add: Callable[[argparse.ArgumentParser], None],
            repeats: int = 3, argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the script's own flags (``add``) and the common ones: ``--repeats``, ``--quick`` (the
    values in ``quick`` replace the defaults of the flags the user did not give: a run of
    seconds that still exercises every path) and ``--out`` (the results folder)."""
    parser = argparse.ArgumentParser(description=(doc or "").strip().splitlines()[0] if doc else None)
    add(parser)
    parser.add_argument("--repeats", type=int, default=repeats, help="measurements per figure (fastest and median kept)")
    parser.add_argument("--quick", action="store_true", help="a few seconds: small sizes, for a smoke test")
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS, help=f"results folder (default {RESULTS})")
    args = parser.parse_args(argv)
    if args.quick:
        given = {a.split("=")[0] for a in (argv if argv is not None else sys.argv[1:]) if a.startswith("--")}
        for name, value in quick.items():
            if "--" + name.replace("_", "-") not in given:
                setattr(args, name, value)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    args.parser = parser
    return args


@dataclass
class Timing:
    """Seconds of repeated measurements: the fastest (the least disturbed on a shared machine) and
    the median (what a typical repeat gave)."""

    seconds: list[float]

    @property
    def fastest(self) -> float:
        return min(self.seconds)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    def as_dict(self) -> dict[str, Any]:
        return {"fastest_s": self.fastest, "median_s": self.median, "all_s": self.seconds}


def timed(call: Callable[[], Any]) -> tuple[float, Any]:
    """Wall seconds of ``call()`` and its value."""
    start = time.perf_counter()
    value = call()
    return time.perf_counter() - start, value


def repeat(call: Callable[[], Any], times: int) -> Timing:
    """``call()`` ``times`` times, timed each time."""
    return Timing([timed(call)[0] for _ in range(times)])


def machine() -> dict[str, Any]:
    """Facts that decide how far figures from two runs compare."""
    return {
        "cores": os.cpu_count(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
    }


@dataclass
class Session:
    """One script's measurement: machine facts at the start and end, then JSON (and a PNG) in
    ``out``. ``args`` are recorded with the results so a figure names what produced it."""

    name: str
    args: argparse.Namespace
    started: dict[str, Any] = field(default_factory=machine)
    began: float = field(default_factory=time.time)

    def write(self, results: dict[str, Any], plot: Callable[[dict[str, Any], pathlib.Path], None] | None = None) -> dict:
        ended = machine()
        report = {
            "script": self.name,
            "time": self.began,
            "seconds": round(time.time() - self.began, 1),
            "options": {k: (str(v) if isinstance(v, pathlib.Path) else v) for k, v in vars(self.args).items() if k != "parser"},
            "machine": {**self.started, "load_average_end": ended["load_average"]},
            **results,
        }
        out = pathlib.Path(self.args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{self.name}.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
        if plot is not None:
            plot(report, out / f"{self.name}.png")
        print(f"load average (1, 5, 15 min) at start {self.started['load_average']}, at end {ended['load_average']}; "
              f"{self.started['cores']} cores; wrote {out / (self.name + '.json')}", flush=True)
        return report


def ratio_line(label: str, mine: float, base: float, target: str = "", unit: str = "s") -> str:
    """``label: 1.23 s vs 1.00 s = 1.23x (target ...)``: one printed comparison."""
    text = f"{label}: {mine:.3f} {unit} vs {base:.3f} {unit} = {mine / base:.2f}x"
    return text + (f" (target {target})" if target else "")


def pyplot():
    """Matplotlib's pyplot on the file-only backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def bars(axis, labels: Iterable[str], values: list[float], colors: list[str] | None = None, fmt: str = "{:.2f}") -> None:
    """Bars with their values written on top."""
    labels = list(labels)
    drawn = axis.bar(labels, values, color=colors)
    for bar, value in zip(drawn, values):
        axis.annotate(fmt.format(value), (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=7)
    axis.tick_params(axis="x", labelsize=7)


def processes_behind_barrier(target: Callable[..., None], args: list[tuple], timeout: float = 600) -> tuple[float, list[Any]]:
    """Start one spawned process per ``args``, calling ``target(*args, barrier, out)``; time from the
    moment all of them reach ``barrier.wait()`` (their imports and set-up are not timed) until each
    has put its one result in ``out``. Returns the seconds and the results; a process that exits
    with an error fails the measurement."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(len(args) + 1), ctx.Queue()
    procs = [ctx.Process(target=target, args=(*one, barrier, out)) for one in args]
    for proc in procs:
        proc.start()
    barrier.wait(timeout=120)
    began = time.perf_counter()
    results = [out.get(timeout=timeout) for _ in procs]
    seconds = time.perf_counter() - began
    for proc in procs:
        proc.join()
        assert proc.exitcode == 0, f"{target.__name__} process exited with {proc.exitcode}"
    return seconds, results
