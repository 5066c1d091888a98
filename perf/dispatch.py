"""Dispatch cost of shoal on Dask and Ray against the raw engines, like for like, one warm cluster
per engine.

    python perf/dispatch.py [--runs 2000] [--chunk 250] [--cpu-tasks 40] [--cpu-seconds 0.5]
                            [--engines dask,ray] [--repeats 5] [--quick] [--out DIR]

Per engine (2 workers), N no-op runs, every shoal run recorded in the project database, measured in
like-for-like pairs:

- one task per run: ``fn.map(..., batch_size=1)`` against one raw engine task per item
  (``client.map``/``gather``; ``ray.remote`` then ``ray.get``);
- batched: ``fn.map(..., batch_size=K)`` against the raw engine given the same items in chunks of
  K by hand (one engine task runs K calls). K defaults to the largest batch shoal's automatic
  batching makes of N runs on 2 slots, ``ceil((N - 2) / (2 x 4))`` (at least 4 batches per slot
  after one probe run per slot; see ``shoal.batching``): 250 for 2,000 runs. Shoal's
  ``batch_size="auto"`` (which may pick smaller batches from its probes' durations) is timed
  too and set beside the same raw batched figure (it also waits for its probe runs first).

The per-run overhead of each pair is (shoal - raw) / N from that pair's own fastest times. Then
CPU-bound tasks (a busy loop on ``time.thread_time()``: CPU time, so a task sharing its core with
other load takes longer, as real work would) through ``fn.map`` and through the raw engine, each
against its ideal time on 2 workers. Engine ``dask-in-driver`` (not run by default): shoal on a
LocalCluster whose scheduler runs in the driver's interpreter. Dask's "Sending large graph" warnings
raised by shoal's maps are kept in ``large_graph_warnings`` (none expected: code travels once per
function, see ``shoal.backends.dask.shipping``). Writes ``dispatch.json``/``.png``.
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
import warnings

from harness import Session, Timing, bars, options, pyplot, ratio_line, timed

WORKERS = 2
PROBES_PER_SLOT, BATCHES_PER_SLOT = 1, 4  # shoal's automatic batching: one probe per slot, >= 4 batches per slot


def noop(x: int = 0) -> int:
    return x


def noops(xs: list[int]) -> list[int]:
    """A raw engine task carrying a chunk of no-op calls (batching by hand)."""
    return [noop(x) for x in xs]


def burn(seconds: float = 0.5) -> float:
    """Busy until this thread has used ``seconds`` of CPU time (no sleeping: it occupies a core)."""
    end = time.thread_time() + seconds
    total = 0.0
    while time.thread_time() < end:
        total += 1.0
    return total


def auto_chunk(runs: int) -> int:
    """The batch size shoal's automatic batching picks for no-op runs (well under 1 ms each)."""
    return max(1, math.ceil((runs - WORKERS * PROBES_PER_SLOT) / (WORKERS * BATCHES_PER_SLOT)))


def chunked(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


# -- the raw engines -------------------------------------------------------------------------------
class RawDask:
    def __init__(self, backend) -> None:
        self.client = backend.client

    def each(self, func, items: list) -> list:
        return self.client.gather(self.client.map(func, items, pure=False))

    def chunks(self, items: list, size: int) -> list:
        return [y for part in self.each(noops, chunked(items, size)) for y in part]


class RawRay:
    def __init__(self, backend) -> None:
        import ray

        self.ray = ray
        self.remotes = {}

    def remote(self, func):
        if func not in self.remotes:
            self.remotes[func] = self.ray.remote(num_cpus=1, max_retries=0)(func)
        return self.remotes[func]

    def each(self, func, items: list) -> list:
        remote = self.remote(func)
        return self.ray.get([remote.remote(x) for x in items])

    def chunks(self, items: list, size: int) -> list:
        return [y for part in self.each(noops, chunked(items, size)) for y in part]


def in_driver_cluster():
    """The embedded cluster as it was before its scheduler and workers became programs of their
    own: a LocalCluster whose scheduler runs in this interpreter."""
    import logging

    import dask.config
    from distributed import LocalCluster

    from shoal.backends.dask import EMBEDDED_CONFIG

    with dask.config.set({"distributed.scheduler.allowed-failures": 0, **EMBEDDED_CONFIG}):
        unprofiled = {"distributed": {"worker": {"profile": {"enabled": False}}}}
        return LocalCluster(n_workers=WORKERS, threads_per_worker=1, processes=True, dashboard_address=None,
                            silence_logs=logging.ERROR, preload=["shoal.backends.dask.worker"],
                            config=dask.config.merge(dask.config.config, unprofiled),
                            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"})


class InDriverDask:
    """A dask backend over ``in_driver_cluster()``, closing both."""

    def __enter__(self):
        import shoal.backends

        self.cluster = in_driver_cluster()
        self.backend = shoal.backends.get("dask", cluster=self.cluster)
        return self.backend

    def __exit__(self, *exc):
        self.backend.close()
        self.cluster.close()


def make_backend(engine: str):
    import shoal.backends

    if engine == "dask":
        return shoal.backends.get("dask", n_workers=WORKERS)
    if engine == "dask-in-driver":
        return InDriverDask()
    return shoal.backends.get("ray", num_cpus=WORKERS)


# -- the measurement -------------------------------------------------------------------------------
def measure(engine: str, args) -> dict:
    import shoal

    runs, chunk, items = args.runs, args.chunk or auto_chunk(args.runs), list(range(args.runs))
    with tempfile.TemporaryDirectory() as folder, make_backend(engine) as backend:
        project = shoal.Project(folder, name="perf")
        fn_noop, fn_burn = shoal.function(noop), shoal.function(burn)
        raw = RawRay(backend) if engine == "ray" else RawDask(backend)
        graph_warnings: list[str] = []  # Dask's "Sending large graph" from shoal's maps: none expected

        def shoal_map(batch_size) -> None:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                results = fn_noop.map(items, backend=backend, project=project, batch_size=batch_size)
            graph_warnings.extend(str(w.message).splitlines()[0] for w in caught if "large graph" in str(w.message))
            assert [r.state for r in results] == ["completed"] * runs, "a no-op run did not complete"

        cases = {
            "raw_each": lambda: raw.each(noop, items),
            "shoal_each": lambda: shoal_map(1),
            "raw_chunks": lambda: raw.chunks(items, chunk),
            "shoal_chunks": lambda: shoal_map(chunk),
            "shoal_auto": lambda: shoal_map("auto"),
        }
        for call in (lambda: fn_noop.map(items[:50], backend=backend, project=project), lambda: raw.each(noop, items[:50]),
                     lambda: raw.chunks(items[:50], 10)):
            call()  # warm: workers up, code shipped and imported, database open
        times: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.repeats):  # interleaved: one machine state for every pair
            for name, call in cases.items():
                times[name].append(timed(call)[0])
        project.flush()
        recorded = len(project.runs.list(function="noop", state="completed", limit=None))
        expected = 50 + 3 * runs * args.repeats + 1 + 3 * args.repeats  # each map's parent run too

        # Warm and settle: the first CPU batch after the no-op maps is slowed by their tail (measured:
        # whichever side went first lost up to half its efficiency), so both sides burn a while first.
        raw.each(burn, [0.5] * 2 * WORKERS)
        fn_burn.map([0.5] * 2 * WORKERS, backend=backend, project=project)
        cpu = [args.cpu_seconds] * args.cpu_tasks
        raw_cpu = timed(lambda: raw.each(burn, cpu))[0]
        shoal_cpu, burned = timed(lambda: fn_burn.map(cpu, backend=backend, project=project))
        assert all(r.state == "completed" for r in burned), "a CPU-bound run did not complete"
        project.close()

    timing = {name: Timing(seconds) for name, seconds in times.items()}
    ideal = args.cpu_tasks * args.cpu_seconds / WORKERS

    def pair(mine: str, base: str) -> dict:
        a, b = timing[mine], timing[base]
        return {"shoal": a.as_dict(), "raw": b.as_dict(), "ratio": a.fastest / b.fastest,
                "ratio_median": a.median / b.median, "overhead_ms_per_run": (a.fastest - b.fastest) / runs * 1e3,
                "overhead_ms_per_run_median": (a.median - b.median) / runs * 1e3}

    return {
        "engine": engine, "runs": runs, "chunk": chunk, "recorded_runs": recorded, "expected_recorded_runs": expected,
        "large_graph_warnings": sorted(set(graph_warnings)),
        "one_task_per_run": pair("shoal_each", "raw_each"),
        "batched": pair("shoal_chunks", "raw_chunks"),
        "auto_vs_raw_batched": pair("shoal_auto", "raw_chunks"),
        "cpu": {"tasks": args.cpu_tasks, "seconds": args.cpu_seconds, "ideal_s": ideal, "shoal_s": shoal_cpu,
                "raw_s": raw_cpu, "shoal_efficiency": ideal / shoal_cpu, "raw_efficiency": ideal / raw_cpu},
    }


def describe(row: dict) -> list[str]:
    one, batched, auto, cpu = row["one_task_per_run"], row["batched"], row["auto_vs_raw_batched"], row["cpu"]
    name = f"{row['engine']}, {row['runs']} no-op runs"
    return [
        ratio_line(f"{name}, one task per run (shoal batch_size=1 / raw one task per item)", one["shoal"]["fastest_s"],
                   one["raw"]["fastest_s"], "<= 1.25x") + f"; overhead {one['overhead_ms_per_run']:.3f} ms/run",
        ratio_line(f"{name}, batched by {row['chunk']} (shoal batch_size={row['chunk']} / raw chunks)",
                   batched["shoal"]["fastest_s"], batched["raw"]["fastest_s"])
        + f"; overhead {batched['overhead_ms_per_run']:.3f} ms/run (target <= 0.1)",
        ratio_line(f"{name}, shoal batch_size='auto' / raw chunks of {row['chunk']}", auto["shoal"]["fastest_s"],
                   auto["raw"]["fastest_s"]) + f"; overhead {auto['overhead_ms_per_run']:.3f} ms/run",
        f"{row['engine']}: {row['recorded_runs']} runs recorded completed (expected {row['expected_recorded_runs']}); "
        f"{cpu['tasks']} x {cpu['seconds']} s CPU: shoal {cpu['shoal_s']:.2f} s (efficiency {cpu['shoal_efficiency']:.2f}), "
        f"raw {cpu['raw_s']:.2f} s (efficiency {cpu['raw_efficiency']:.2f}), ideal {cpu['ideal_s']:.2f} s",
    ] + [f"{row['engine']}: shoal's map sent a large graph: {text}" for text in row["large_graph_warnings"]]


def plot(report: dict, path) -> None:
    plt = pyplot()
    rows = report["engines"]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
    for axis, key, title in ((axes[0], "one_task_per_run", "one task per run"), (axes[1], "batched", "batched by hand / batch_size=K")):
        labels, values, colors = [], [], []
        for row in rows:
            labels += [f"{row['engine']}\nraw", f"{row['engine']}\nshoal"]
            values += [row[key]["raw"]["fastest_s"], row[key]["shoal"]["fastest_s"]]
            colors += ["#999999", "#3b75af"]
        bars(axis, labels, values, colors, "{:.2f} s")
        axis.set_title(f"{rows[0]['runs']} no-op runs, {title}", fontsize=9)
        axis.set_ylabel("seconds (fastest repeat)")
    labels, values, colors = [], [], []
    for row in rows:
        labels += [f"{row['engine']}\nraw", f"{row['engine']}\nshoal"]
        values += [row["cpu"]["raw_efficiency"], row["cpu"]["shoal_efficiency"]]
        colors += ["#999999", "#519e3e"]
    bars(axes[2], labels, values, colors)
    axes[2].set_ylim(0, 1.1)
    axes[2].set_title(f"{rows[0]['cpu']['tasks']} x {rows[0]['cpu']['seconds']} s CPU tasks, efficiency", fontsize=9)
    fig.suptitle(f"load average {report['machine']['load_average']} -> {report['machine']['load_average_end']}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def add(parser) -> None:
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--chunk", type=int, default=0, help="runs per batch for both sides (0: what shoal's auto batching picks)")
    parser.add_argument("--cpu-tasks", type=int, default=40)
    parser.add_argument("--cpu-seconds", type=float, default=0.5)
    parser.add_argument("--engines", default="dask,ray")


def main() -> int:
    # 5 repeats: on 2 cores the raw engine's own one-task-per-run map took 1.01-1.39 s from one
    # repeat to the next within a run (Ray, 2,000 runs), so the fastest of 3 was often a slow one.
    args = options(__doc__, {"runs": 200, "cpu_tasks": 4, "cpu_seconds": 0.2, "repeats": 1}, add, repeats=5)
    session = Session("dispatch", args)
    rows = []
    for engine in [e.strip() for e in args.engines.split(",") if e.strip()]:
        rows.append(measure(engine, args))
        print("\n".join(describe(rows[-1])), flush=True)
    session.write({"workers": WORKERS, "engines": rows}, plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
