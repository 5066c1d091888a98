"""Per-run overhead of shoal's local backend against calling the function directly.

    python perf/local_overhead.py [--runs 1000] [--repeats 3] [--quick] [--out DIR]

Measures, in one process: N direct calls of a no-op function; N recorded ``fn.run()`` calls one
after another (each checked, recorded pending, executed, recorded finished); and one ``fn.map`` of N
runs. Prints the per-run cost (median of ``--repeats``) and the ratios, and writes
``local_overhead.json`` and ``local_overhead.png``. Target on the 2-core reference machine: under 2 ms per recorded run.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time

from harness import Session, options, pyplot


def noop(x: int = 0) -> None:
    return None


def measure(runs: int, repeats: int) -> dict:
    import shoal

    with tempfile.TemporaryDirectory() as folder:
        project = shoal.Project(folder, name="perf")
        fn = shoal.function(noop)
        fn.run({"x": 0}, project=project, watch=False)  # warm: saves the version, opens the database

        direct, sequential, mapped = [], [], []
        for _ in range(repeats):
            start = time.perf_counter()
            for i in range(runs):
                noop(i)
            direct.append((time.perf_counter() - start) / runs)

            start = time.perf_counter()
            for i in range(runs):
                run = fn.run({"x": i}, project=project, watch=False)
            sequential.append((time.perf_counter() - start) / runs)
            assert run.state == "completed"

            start = time.perf_counter()
            results = fn.map([{"x": i} for i in range(runs)], project=project)
            mapped.append((time.perf_counter() - start) / runs)
            assert all(r.state == "completed" for r in results)

        recorded = len(project.runs.list(function="noop"))
        project.close()
    return {
        "runs": runs,
        "repeats": repeats,
        "direct_s_per_call": statistics.median(direct),
        "run_s_per_run": statistics.median(sequential),
        "map_s_per_run": statistics.median(mapped),
        "recorded_runs": recorded,
    }


def plot(result: dict, path) -> None:
    plt = pyplot()
    labels = ["direct call", "fn.run (sequential)", "fn.map"]
    values = [result["direct_s_per_call"] * 1e3, result["run_s_per_run"] * 1e3, result["map_s_per_run"] * 1e3]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bars = ax.bar(labels, values, color=["#999999", "#3b75af", "#519e3e"])
    ax.axhline(2.0, color="red", linestyle="--", linewidth=1, label="target: 2 ms per recorded run")
    ax.bar_label(bars, fmt="%.3f ms")
    ax.set_ylabel("ms per run")
    ax.set_title(f"shoal local backend, {result['runs']} no-op runs (SQLite)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    args = options(__doc__, {"runs": 100, "repeats": 1}, lambda parser: parser.add_argument("--runs", type=int, default=1000))
    session = Session("local_overhead", args)
    result = measure(args.runs, args.repeats)
    overhead = result["run_s_per_run"] - result["direct_s_per_call"]
    result["overhead_ms_per_recorded_run"] = overhead * 1e3
    result["map_overhead_ms_per_run"] = (result["map_s_per_run"] - result["direct_s_per_call"]) * 1e3
    session.write(result, plot)
    print(f"direct call:        {result['direct_s_per_call'] * 1e6:9.2f} us")
    print(f"fn.run (recorded):  {result['run_s_per_run'] * 1e3:9.3f} ms per run")
    print(f"fn.map (recorded):  {result['map_s_per_run'] * 1e3:9.3f} ms per run")
    print(f"overhead per recorded run: {result['overhead_ms_per_recorded_run']:.3f} ms (target < 2 ms)")
    print(f"ratio fn.run / direct: {result['run_s_per_run'] / result['direct_s_per_call']:.0f}x")
    print(f"recorded runs in the store: {result['recorded_runs']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
