"""Dispatch cost of shoal on Dask and Ray against the raw engines, in one process and one warm
cluster per engine.

    python perf/dispatch.py [--runs 2000] [--cpu-tasks 40] [--cpu-seconds 0.5] [--engines dask,ray]

Engine ``dask-in-driver`` (not run by default) is shoal on a LocalCluster whose scheduler runs in
the driver's interpreter, as the embedded cluster did before its processes became programs of
their own: ``--engines dask,dask-in-driver`` measures what that move changed, on one machine state.

Per engine: N no-op runs through ``fn.map`` (every run recorded in the project database) and the
same N no-op calls through the raw engine (``client.map``/``gather``, ``ray.remote``/``ray.get``);
then a batch of CPU-bound tasks through ``fn.map`` against its ideal time on 2 workers. Prints the
wall-time ratio shoal/raw (target <= 1.25), the per-run overhead, and the parallel efficiency
(target >= 0.9); writes ``perf/results/dispatch.json`` and ``dispatch.png``.

``fn.map`` batches short runs by default (``batch_size="auto"``); the ratio with one engine task per
run (``batch_size=1``, as the raw engine calls are made) is printed beside it.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
import time

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
WORKERS = 2


def noop(x: int = 0) -> int:
    return x


def burn(seconds: float = 0.5) -> float:
    """Busy CPU for ``seconds`` of wall time (no sleeping: it must occupy a core)."""
    end = time.perf_counter() + seconds
    total = 0.0
    while time.perf_counter() < end:
        total += 1.0
    return total


def timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def raw_dask(backend, runs: int) -> float:
    client = backend.client
    return timed(lambda: client.gather(client.map(noop, range(runs), pure=False)))


def raw_ray(backend, runs: int) -> float:
    import ray

    remote = ray.remote(num_cpus=1, max_retries=0)(noop)
    return timed(lambda: ray.get([remote.remote(i) for i in range(runs)]))


RAW = {"dask": raw_dask, "dask-in-driver": raw_dask, "ray": raw_ray}


def in_driver_cluster():
    """For comparison: the embedded cluster as it was before its scheduler and workers became
    programs of their own: a LocalCluster whose scheduler runs in this interpreter and whose Nanny
    workers are this process's spawn children, with the embedded cluster's settings."""
    import logging

    import dask.config
    from distributed import LocalCluster

    from shoal.backends.dask import EMBEDDED_CONFIG

    with dask.config.set({"distributed.scheduler.allowed-failures": 0, **EMBEDDED_CONFIG}):
        unprofiled = {"distributed": {"worker": {"profile": {"enabled": False}}}}
        return LocalCluster(
            n_workers=WORKERS,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
            preload=["shoal.backends.dask"],
            config=dask.config.merge(dask.config.config, unprofiled),
            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
        )


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


def measure(engine: str, runs: int, cpu_tasks: int, cpu_seconds: float, repeats: int) -> dict:
    import shoal

    with tempfile.TemporaryDirectory() as folder, make_backend(engine) as backend:
        project = shoal.Project(folder, name="perf")
        fn_noop = shoal.function(noop)
        fn_burn = shoal.function(burn)
        # Warm up: workers started, code shipped and loaded, database open.
        fn_noop.map([{"x": i} for i in range(50)], backend=backend, project=project)
        RAW[engine](backend, 50)

        raw_times, shoal_times, unbatched_times = [], [], []
        for _ in range(repeats):
            raw_times.append(RAW[engine](backend, runs))
            for batch_size, times in (("auto", shoal_times), (1, unbatched_times)):
                start = time.perf_counter()
                results = fn_noop.map(
                    [{"x": i} for i in range(runs)], backend=backend, project=project, batch_size=batch_size
                )
                times.append(time.perf_counter() - start)
                assert all(r.state == "completed" for r in results), "a no-op run did not complete"
        project.flush()
        recorded = project.store.count_runs(function="noop", state="completed")

        fn_burn.map([{"seconds": 0.05}] * WORKERS, backend=backend, project=project)  # warm
        start = time.perf_counter()
        burned = fn_burn.map([{"seconds": cpu_seconds}] * cpu_tasks, backend=backend, project=project)
        cpu_wall = time.perf_counter() - start
        assert all(r.state == "completed" for r in burned)
        project.close()

    raw, mine, unbatched = min(raw_times), min(shoal_times), min(unbatched_times)
    ideal = cpu_tasks * cpu_seconds / WORKERS
    return {
        "engine": engine,
        "runs": runs,
        "raw_s": raw,
        "shoal_s": mine,
        "ratio": mine / raw,
        "unbatched_s": unbatched,
        "unbatched_ratio": unbatched / raw,
        "overhead_ms_per_run": (mine - raw) / runs * 1e3,
        "recorded_runs": recorded,
        "cpu_tasks": cpu_tasks,
        "cpu_seconds": cpu_seconds,
        "cpu_wall_s": cpu_wall,
        "cpu_ideal_s": ideal,
        "parallel_efficiency": ideal / cpu_wall,
    }


def plot(rows: list[dict], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    names = [r["engine"] for r in rows]
    width = 0.27
    xs = range(len(rows))
    left.bar([x - width for x in xs], [r["raw_s"] for r in rows], width, label="raw engine", color="#999999")
    left.bar(list(xs), [r["shoal_s"] for r in rows], width, label="shoal fn.map (recorded)", color="#3b75af")
    left.bar([x + width for x in xs], [r["unbatched_s"] for r in rows], width, label="shoal, batch_size=1", color="#a6c8e8")
    for x, row in zip(xs, rows):
        left.annotate(f"{row['ratio']:.2f}x", (x, row["shoal_s"]), ha="center", va="bottom")
        left.annotate(f"{row['unbatched_ratio']:.2f}x", (x + width, row["unbatched_s"]), ha="center", va="bottom", fontsize=7)
    left.set_xticks(list(xs), names)
    left.set_ylabel("seconds")
    left.set_title(f"{rows[0]['runs']} no-op runs (target <= 1.25x)")
    left.legend(fontsize=8)
    right.bar(names, [r["parallel_efficiency"] for r in rows], color="#519e3e")
    right.axhline(0.9, color="red", linestyle="--", linewidth=1, label="target 0.9")
    right.set_ylim(0, 1.05)
    right.set_title(f"{rows[0]['cpu_tasks']} x {rows[0]['cpu_seconds']} s CPU tasks on {WORKERS} workers")
    right.set_ylabel("parallel efficiency")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--cpu-tasks", type=int, default=40)
    parser.add_argument("--cpu-seconds", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--engines", default="dask,ray")
    args = parser.parse_args()
    rows = []
    for engine in args.engines.split(","):
        row = measure(engine.strip(), args.runs, args.cpu_tasks, args.cpu_seconds, args.repeats)
        rows.append(row)
        print(
            f"{row['engine']:5s} {row['runs']} no-op runs: raw {row['raw_s']:.2f} s, shoal {row['shoal_s']:.2f} s, "
            f"ratio {row['ratio']:.2f} (target <= 1.25), overhead {row['overhead_ms_per_run']:.3f} ms/run, "
            f"one task per run {row['unbatched_s']:.2f} s (ratio {row['unbatched_ratio']:.2f}), "
            f"recorded {row['recorded_runs']}; CPU batch {row['cpu_wall_s']:.2f} s vs ideal "
            f"{row['cpu_ideal_s']:.2f} s, efficiency {row['parallel_efficiency']:.2f} (target >= 0.9)",
            flush=True,
        )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "dispatch.json").write_text(json.dumps({"time": time.time(), "engines": rows}, indent=2))
    plot(rows, RESULTS / "dispatch.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
