"""Throughput of shoal.tune on Dask and Ray against plain Optuna and Ray Tune, in one process and one
warm cluster per engine.

    python perf/tuning.py [--short-trials 200] [--cpu-trials 40] [--cpu-seconds 0.5]
                          [--engines dask,ray] [--repeats 1] [--skip-raytune]

Every search is a TPE study (same space, same seed, parallelism 2) whose study lives in the same kind
of storage: an Optuna journal file, shoal's default next to a SQLite project database.

- shoal: ``fn.tune(...)`` on a warm Dask LocalCluster (2 workers) and a warm local Ray instance
  (2 CPUs); every trial is a recorded run (checked in the project store).
- plain Optuna: ``study.optimize(objective, n_jobs=2)`` (threads in this process).
- Ray Tune: ``Tuner`` with ``OptunaSearch`` (same journal storage), ``max_concurrent_trials=2``, on the
  Ray instance shoal's ray backend started (Ray allows one connection per process), actors reused,
  Tune's automatic CSV/JSON/TensorBoard loggers off (both in its favour).

Two workloads: short trials (a 10 ms objective, sleeping, so dispatch cost dominates) and CPU-bound
trials (a busy loop until the trial's thread has used ``--cpu-seconds`` of CPU time). Prints trials
per second, shoal/Optuna throughput on short trials (target >= 0.8), shoal/Ray Tune (target >= 3),
and shoal's parallel efficiency on the CPU-bound trials against ``trials x seconds / 2`` (target >=
0.9; Optuna's threads share one GIL, so its CPU-bound figure shows no scaling). ``--repeats N`` runs
every search N times per system and keeps the fastest, for all systems alike: on a small shared
machine single searches move by several percent. Writes ``perf/results/tuning.json`` and
``tuning.png``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import sys
import tempfile
import time

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
WORKERS = 2
SHORT_SECONDS = 0.01
SEED = 7
LOW, HIGH = -5.0, 5.0


def score(x: float, y: float) -> float:
    return -((x - 1.0) ** 2) - (y + 2.0) ** 2


def burn(seconds: float) -> None:
    """Busy CPU until this thread has used ``seconds`` of CPU time (no sleeping: it must occupy a
    core). CPU time, not wall time: threads sharing one GIL each get a share, as real work would."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def short(x: float, y: float) -> dict:
    began = time.perf_counter()
    time.sleep(SHORT_SECONDS)
    return {"accuracy": score(x, y), "busy_s": time.perf_counter() - began}


def cpu(x: float, y: float, seconds: float = 0.5) -> dict:
    began = time.perf_counter()
    burn(seconds)
    return {"accuracy": score(x, y), "busy_s": time.perf_counter() - began}


def timed(call) -> tuple[float, object]:
    """Wall seconds of ``call()`` (and, in ``timed.cpu``, this process's CPU seconds meanwhile)."""
    start, cpu_start = time.perf_counter(), time.process_time()
    value = call()
    timed.cpu = time.process_time() - cpu_start
    return time.perf_counter() - start, value


def outcome(seconds: float, completed: int, busy: float) -> dict:
    """One search: wall seconds, trials completed, the wall time spent inside objectives, and the
    CPU time of this (the driver's) process: on a loaded machine, throughput follows it."""
    return {"seconds": seconds, "completed": completed, "busy_s": busy, "driver_cpu_s": timed.cpu}


def best(searches) -> dict:
    return min(searches, key=lambda found: found["seconds"])


def row(found: dict, trials: int, cpu_seconds: float | None = None) -> dict:
    """Trials per second; for CPU-bound trials also the efficiency against the ideal wall time and
    the slot occupancy (objective time / (wall x slots): the part of the loss that is not the
    machine's other load slowing the objectives down)."""
    seconds = found["seconds"]
    out = {
        "trials": trials, "completed": found["completed"], "seconds": round(seconds, 3),
        "trials_per_s": trials / seconds, "occupancy": found["busy_s"] / (seconds * WORKERS),
        "driver_cpu_ms_per_trial": 1e3 * found["driver_cpu_s"] / trials,
    }
    if cpu_seconds is not None:
        ideal = trials * cpu_seconds / WORKERS
        out.update(ideal_s=ideal, parallel_efficiency=ideal / seconds,
                   mean_trial_s=found["busy_s"] / max(1, found["completed"]))
    return out


# -- shoal ----------------------------------------------------------------------------------------
def make_backend(engine: str):
    import shoal.backends

    if engine == "dask":
        return shoal.backends.get("dask", n_workers=WORKERS)
    return shoal.backends.get("ray", num_cpus=WORKERS)


def shoal_search(fn, project, backend, study: str, trials: int, constants: dict) -> dict:
    from shoal.tuning import Float

    space = {"x": Float(LOW, HIGH), "y": Float(LOW, HIGH), **constants}
    seconds, result = timed(lambda: fn.tune(
        space, objective="max.accuracy", n_trials=trials, parallelism=WORKERS, backend=backend,
        project=project, study=study, seed=SEED,
    ))
    states = [t["state"] for t in result.trials]
    assert states == ["complete"] * trials, f"shoal {study}: trials not all complete: {set(states)}"
    project.flush()
    recorded = project.store.count_runs(parent=result.parent, state="completed")
    assert recorded == trials, f"shoal {study}: {recorded} of {trials} trials recorded as completed runs"
    runs = {run.uid: run for run in project.runs.list(parent=result.parent, limit=None)}
    assert {t["run"] for t in result.trials} == set(runs), f"shoal {study}: trials and recorded runs differ"
    return outcome(seconds, recorded, sum(run.results["busy_s"] for run in runs.values()))


def measure_shoal(backend, args) -> dict:
    import shoal

    with tempfile.TemporaryDirectory() as folder:
        project = shoal.Project(folder, name="perf")
        fn_short, fn_cpu = shoal.function(short), shoal.function(cpu)
        # Warm up: workers started, code shipped, optuna imported on the workers, storage open.
        shoal_search(fn_short, project, backend, "warm-short", 6, {})
        shoal_search(fn_cpu, project, backend, "warm-cpu", WORKERS, {"seconds": 0.05})
        found = best(shoal_search(fn_short, project, backend, f"short-{i}", args.short_trials, {}) for i in range(args.repeats))
        short_row = {**row(found, args.short_trials), "recorded_runs": found["completed"]}
        found = best(
            shoal_search(fn_cpu, project, backend, f"cpu-{i}", args.cpu_trials, {"seconds": args.cpu_seconds})
            for i in range(args.repeats)
        )
        cpu_row = {**row(found, args.cpu_trials, args.cpu_seconds), "recorded_runs": found["completed"]}
        project.close()
    return {"short": short_row, "cpu": cpu_row}


# -- plain Optuna ---------------------------------------------------------------------------------
def journal(path: pathlib.Path):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(path)))


def optuna_search(storage, study: str, trials: int, work) -> dict:
    import optuna

    busy: list[float] = []  # list.append is atomic: safe from Optuna's threads

    def objective(trial) -> float:
        result = work(trial.suggest_float("x", LOW, HIGH), trial.suggest_float("y", LOW, HIGH))
        busy.append(result["busy_s"])
        return result["accuracy"]

    def search():
        made = optuna.create_study(study_name=study, storage=storage, direction="maximize",
                                   sampler=optuna.samplers.TPESampler(seed=SEED))
        made.optimize(objective, n_trials=trials, n_jobs=WORKERS)
        return made

    seconds, made = timed(search)
    completed = sum(t.state.name == "COMPLETE" for t in made.get_trials(deepcopy=False))
    assert completed == trials, f"optuna {study}: {completed} of {trials} trials complete"
    return outcome(seconds, completed, sum(busy))


def measure_optuna(args) -> dict:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    with tempfile.TemporaryDirectory() as folder:
        storage = journal(pathlib.Path(folder) / "studies.journal")
        optuna_search(storage, "warm", 6, short)
        found = best(optuna_search(storage, f"short-{i}", args.short_trials, short) for i in range(args.repeats))
        short_row = row(found, args.short_trials)
        found = best(
            optuna_search(storage, f"cpu-{i}", args.cpu_trials, lambda x, y: cpu(x, y, args.cpu_seconds))
            for i in range(args.repeats)
        )
        cpu_row = row(found, args.cpu_trials, args.cpu_seconds)
    return {"short": short_row, "cpu": cpu_row}


# -- Ray Tune -------------------------------------------------------------------------------------
def tune_trainable(config: dict) -> None:
    from ray import tune

    if config["seconds"] is None:
        result = short(config["x"], config["y"])
    else:
        result = cpu(config["x"], config["y"], config["seconds"])
    tune.report(result)


def raytune_search(folder: pathlib.Path, storage, study: str, trials: int, seconds: float | None) -> dict:
    import optuna
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    searcher = OptunaSearch(metric="accuracy", mode="max", study_name=study, storage=storage,
                            sampler=optuna.samplers.TPESampler(seed=SEED))
    tuner = tune.Tuner(
        tune_trainable,
        param_space={"x": tune.uniform(LOW, HIGH), "y": tune.uniform(LOW, HIGH), "seconds": seconds},
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=trials, max_concurrent_trials=WORKERS,
                                    reuse_actors=True),
        run_config=tune.RunConfig(name=study, storage_path=str(folder / "ray_results"), verbose=0),
    )
    elapsed, grid = timed(tuner.fit)
    metrics = [r.metrics for r in grid if r.error is None and "accuracy" in (r.metrics or {})]
    assert len(metrics) == trials, f"ray tune {study}: {len(metrics)} of {trials} trials completed"
    return outcome(elapsed, len(metrics), sum(m["busy_s"] for m in metrics))


def measure_raytune(args) -> dict:
    """On the Ray instance that is connected in this process (shoal's ray backend, still open)."""
    import ray

    assert ray.is_initialized(), "Ray Tune runs on the ray backend's instance: open it first"
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    for name in ("ray", "ray.tune", "ray.train"):
        logging.getLogger(name).setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as folder:
        folder = pathlib.Path(folder)
        storage = journal(folder / "studies.journal")
        raytune_search(folder, storage, "warm", 6, None)
        found = best(raytune_search(folder, storage, f"short-{i}", args.short_trials, None) for i in range(args.repeats))
        short_row = row(found, args.short_trials)
        found = best(raytune_search(folder, storage, f"cpu-{i}", args.cpu_trials, args.cpu_seconds) for i in range(args.repeats))
        cpu_row = row(found, args.cpu_trials, args.cpu_seconds)
    return {"short": short_row, "cpu": cpu_row}


# -- report ---------------------------------------------------------------------------------------
def ratios(shoal_row: dict, optuna_row: dict, raytune_row: dict | None) -> dict:
    out = {
        "vs_optuna_short": shoal_row["short"]["trials_per_s"] / optuna_row["short"]["trials_per_s"],
        "parallel_efficiency": shoal_row["cpu"]["parallel_efficiency"],
    }
    if raytune_row is not None:
        out["vs_raytune_short"] = shoal_row["short"]["trials_per_s"] / raytune_row["short"]["trials_per_s"]
        out["vs_raytune_cpu"] = shoal_row["cpu"]["trials_per_s"] / raytune_row["cpu"]["trials_per_s"]
    return out


def describe(name: str, result: dict) -> str:
    s, c = result["short"], result["cpu"]
    return (
        f"{name:13s} short: {s['trials']} trials in {s['seconds']:.2f} s = {s['trials_per_s']:6.1f} trials/s "
        f"(driver CPU {s['driver_cpu_ms_per_trial']:.1f} ms/trial); "
        f"CPU: {c['trials']} x {c['ideal_s'] * WORKERS / c['trials']:g} s in {c['seconds']:.2f} s = "
        f"{c['trials_per_s']:.2f} trials/s, efficiency {c['parallel_efficiency']:.2f} "
        f"(trials took {c['mean_trial_s']:.2f} s each, slots busy {c['occupancy']:.0%} of the time)"
    )


def plot(report: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = [(f"shoal\n{e}", report["shoal"][e]) for e in report["shoal"]]
    systems.append(("optuna\nn_jobs=2", report["optuna"]))
    if report.get("raytune"):
        systems.append(("Ray Tune\nOptunaSearch", report["raytune"]))
    colors = ["#3b75af" if name.startswith("shoal") else "#999999" for name, _ in systems]
    names = [name for name, _ in systems]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.bar(names, [r["short"]["trials_per_s"] for _, r in systems], color=colors)
    left.set_ylabel("trials per second")
    left.set_title(f"{report['short_trials']} trials of a {SHORT_SECONDS * 1e3:g} ms objective, parallelism {WORKERS}", fontsize=9)
    for x, (_, r) in enumerate(systems):
        left.annotate(f"{r['short']['trials_per_s']:.1f}", (x, r["short"]["trials_per_s"]), ha="center", va="bottom", fontsize=8)
    right.bar(names, [r["cpu"]["parallel_efficiency"] for _, r in systems], color=colors, label="efficiency (ideal / wall)")
    right.scatter(names, [r["cpu"]["occupancy"] for _, r in systems], color="black", marker="_", s=400, zorder=3,
                  label="slot occupancy")
    right.axhline(0.9, color="red", linestyle="--", linewidth=1, label="shoal target 0.9")
    right.set_ylim(0, 1.05)
    right.set_ylabel("parallel efficiency")
    right.set_title(f"{report['cpu_trials']} CPU-bound trials of {report['cpu_seconds']:g} s on {WORKERS} workers", fontsize=9)
    right.legend(fontsize=8)
    for axis in (left, right):
        axis.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short-trials", type=int, default=200)
    parser.add_argument("--cpu-trials", type=int, default=40)
    parser.add_argument("--cpu-seconds", type=float, default=0.5)
    parser.add_argument("--engines", default="dask,ray")
    parser.add_argument("--repeats", type=int, default=1, help="searches of each kind per system; the fastest counts")
    parser.add_argument("--skip-raytune", action="store_true", help="do not run the Ray Tune comparison")
    args = parser.parse_args()
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    if min(args.short_trials, args.cpu_trials, args.repeats) < 1 or args.cpu_seconds <= 0:
        parser.error("--short-trials, --cpu-trials and --repeats must be >= 1 and --cpu-seconds > 0")
    if not set(engines) <= {"dask", "ray"} or not engines:
        parser.error(f"--engines takes dask and/or ray, got {args.engines!r}")

    report: dict = {
        "time": time.time(), "load_average": tuple(round(v, 2) for v in os.getloadavg()), "short_trials": args.short_trials,
        "short_seconds": SHORT_SECONDS, "cpu_trials": args.cpu_trials, "cpu_seconds": args.cpu_seconds,
        "repeats": args.repeats, "workers": WORKERS, "storage": "optuna journal file", "shoal": {}, "raytune": None,
    }
    report["optuna"] = measure_optuna(args)
    print(describe("optuna", report["optuna"]), flush=True)
    for engine in engines:
        with make_backend(engine) as backend:
            report["shoal"][engine] = measure_shoal(backend, args)
            print(describe(f"shoal {engine}", report["shoal"][engine]), flush=True)
            if engine == "ray" and not args.skip_raytune:
                report["raytune"] = measure_raytune(args)
                print(describe("ray tune", report["raytune"]), flush=True)
    if report["raytune"] is None and not args.skip_raytune:
        import shoal.backends

        with shoal.backends.get("ray", num_cpus=WORKERS).start():  # a Ray instance for Ray Tune alone
            report["raytune"] = measure_raytune(args)
        print(describe("ray tune", report["raytune"]), flush=True)

    report["ratios"] = {}
    for engine, result in report["shoal"].items():
        r = report["ratios"][engine] = ratios(result, report["optuna"], report["raytune"])
        line = (
            f"shoal {engine}: {r['vs_optuna_short']:.2f}x plain Optuna on short trials (target >= 0.8, "
            f"{result['short']['recorded_runs']} runs recorded)"
        )
        if "vs_raytune_short" in r:
            line += f", {r['vs_raytune_short']:.2f}x Ray Tune (target >= 3; CPU-bound {r['vs_raytune_cpu']:.2f}x)"
        line += (
            f", parallel efficiency {r['parallel_efficiency']:.2f} (target >= 0.9; "
            f"slot occupancy {result['cpu']['occupancy']:.2f})"
        )
        print(line, flush=True)
    report["load_average_end"] = tuple(round(v, 2) for v in os.getloadavg())
    print(f"load average (1, 5, 15 min) at start {report['load_average']}, at end {report['load_average_end']}", flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "tuning.json").write_text(json.dumps(report, indent=2))
    plot(report, RESULTS / "tuning.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
