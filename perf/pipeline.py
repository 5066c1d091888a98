"""A pipeline of no-op steps against the same graph written with the raw engine's futures, and a
fully cached rerun, one warm cluster per engine.

    python perf/pipeline.py [--steps 1000] [--engines dask,ray] [--repeats 3] [--quick] [--out DIR]

The graph: ``steps / 2`` independent no-op steps, then ``steps / 2`` steps each using the result of
one of them (``handle.output("return")``: the engine waits for the producer). Shoal records every
step (and the pipeline's parent run) in the project database; the raw side is
``client.submit(noop, future)`` on Dask and ``remote.remote(ref)`` on Ray, then one gather/get.
Each repeat times raw then shoal (interleaved, ``cache=False``), in wall seconds and in this
process's CPU seconds (all threads: on a shared machine the driver's own cost); then the same pipeline with
caching on is run once to fill the cache and timed again fully cached (every step ``cached``, no
engine task). Writes ``pipeline.json``/``.png``.
"""

from __future__ import annotations

import sys
import tempfile
import time

from harness import Session, bars, options, pyplot, ratio_line, timed

WORKERS = 2


def noop(x: int = 0) -> int:
    return x


def make_backend(engine: str):
    import shoal.backends

    if engine == "dask":
        return shoal.backends.get("dask", n_workers=WORKERS)
    return shoal.backends.get("ray", num_cpus=WORKERS)


def raw_graph(engine: str, backend, half: int) -> list:
    """The graph with the engine's own futures: ``half`` tasks, then ``half`` each after one."""
    if engine == "dask":
        client = backend.client
        first = [client.submit(noop, i, pure=False) for i in range(half)]
        second = [client.submit(noop, future, pure=False) for future in first]
        return client.gather(first + second)
    import ray

    remote = ray.remote(num_cpus=1, max_retries=0)(noop)
    first = [remote.remote(i) for i in range(half)]
    second = [remote.remote(ref) for ref in first]
    return ray.get(first + second)


def measure(engine: str, args) -> dict:
    import shoal

    half = args.steps // 2
    step = shoal.function(noop)

    @shoal.pipeline
    def fan(n: int = 500):
        first = [step.submit({"x": i}) for i in range(n)]
        for handle in first:
            step.submit({"x": handle.output("return")})

    with tempfile.TemporaryDirectory() as folder, make_backend(engine) as backend:
        project = shoal.Project(folder, name="perf")
        raw_graph(engine, backend, 4)  # warm: workers up, functions shipped
        fan.run({"n": 4}, backend=backend, project=project, cache=False)
        raw_s, shoal_s, raw_cpu, shoal_cpu = [], [], [], []
        for _ in range(args.repeats):
            cpu = time.process_time()
            seconds, values = timed(lambda: raw_graph(engine, backend, half))
            raw_cpu.append(time.process_time() - cpu)
            assert values == list(range(half)) * 2
            raw_s.append(seconds)
            cpu = time.process_time()
            seconds, run = timed(lambda: fan.run({"n": half}, backend=backend, project=project, cache=False))
            shoal_cpu.append(time.process_time() - cpu)
            assert run.state == "completed" and run.results["steps"] == {"completed": 2 * half}, run.error
            shoal_s.append(seconds)
        recorded = project.store.count_runs(parent=run.uid)
        fill_s, filled = timed(lambda: fan.run({"n": half}, backend=backend, project=project))
        assert filled.state == "completed", filled.error
        cached_s = []
        for _ in range(args.repeats):
            seconds, again = timed(lambda: fan.run({"n": half}, backend=backend, project=project))
            assert again.results["steps"] == {"cached": 2 * half}, again.results["steps"]
            cached_s.append(seconds)
        project.close()
    return {
        "engine": engine,
        "steps": 2 * half,
        "raw_s": raw_s,
        "shoal_s": shoal_s,
        "ratio_fastest": min(shoal_s) / min(raw_s),
        "raw_driver_cpu_s": raw_cpu,  # this process, all its threads: what shoal adds on the driver
        "shoal_driver_cpu_s": shoal_cpu,
        "recorded_steps": recorded,
        "fill_cache_s": fill_s,
        "cached_rerun_s": cached_s,
    }


def describe(row: dict) -> list[str]:
    name = f"{row['engine']}, {row['steps']} no-op steps"
    return [
        ratio_line(f"{name} (shoal pipeline / raw futures)", min(row["shoal_s"]), min(row["raw_s"]), "<= 1.5x")
        + f"; {row['recorded_steps']} steps recorded; driver CPU {min(row['shoal_driver_cpu_s']):.2f} s vs "
        f"{min(row['raw_driver_cpu_s']):.2f} s raw",
        f"{name}: fully cached rerun {min(row['cached_rerun_s']):.3f} s (target < 1 s); "
        f"filling the cache took {row['fill_cache_s']:.3f} s",
    ]


def plot(report: dict, path) -> None:
    plt = pyplot()
    rows = report["engines"]
    fig, axis = plt.subplots(figsize=(7, 3.8))
    labels, values, colors = [], [], []
    for row in rows:
        labels += [f"{row['engine']}\nraw", f"{row['engine']}\nshoal", f"{row['engine']}\ncached"]
        values += [min(row["raw_s"]), min(row["shoal_s"]), min(row["cached_rerun_s"])]
        colors += ["#999999", "#3b75af", "#519e3e"]
    bars(axis, labels, values, colors, "{:.2f} s")
    axis.set_ylabel("seconds (fastest repeat)")
    axis.set_title(f"pipeline of {rows[0]['steps']} no-op steps (half after the other half)", fontsize=9)
    fig.suptitle(
        f"load average {report['machine']['load_average']} -> {report['machine']['load_average_end']}", fontsize=8
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def add(parser) -> None:
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--engines", default="dask,ray")


def reported(row: dict) -> dict:
    print("\n".join(describe(row)), flush=True)
    return row


def main() -> int:
    args = options(__doc__, {"steps": 40, "repeats": 1}, add)
    session = Session("pipeline", args)
    engines = [name.strip() for name in args.engines.split(",") if name.strip()]
    session.write({"workers": WORKERS, "engines": [reported(measure(name, args)) for name in engines]}, plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
