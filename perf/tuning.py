"""Throughput and search quality of shoal.tune on Dask and Ray against plain Optuna and Ray Tune,
every system on the same storage with the same lock, one warm cluster per engine.

    python perf/tuning.py [--short-trials 200] [--seeds 3] [--quality-seeds 12] [--cpu-trials 40]
                          [--cpu-seconds 0.5] [--engines dask,ray] [--skip-raytune] [--repeats 1]
                          [--quick] [--out DIR]

Every search is a TPE study of the same space (the Branin function, maximised as ``-branin``: its
best value, -0.397887, is known), parallelism 2, on a fresh Optuna journal file written under
shoal's lock (``JournalFileBackend(path, lock_obj=QueuedJournalLock(path))``): the very storage
class shoal opens for a project on SQLite, handed to every system.

- shoal: ``fn.tune(..., storage=<that storage>)`` on a warm embedded Dask cluster (2 workers) and a
  warm local Ray instance (2 CPUs); every trial is a recorded run (checked in the project store).
- optuna processes: 2 processes, each running ``study.optimize`` on the shared journal until the
  study holds the trials asked for (``MaxTrialsCallback``): Optuna's own way to use 2 cores,
  started behind a barrier so that interpreter start-up is not timed.
- optuna threads: ``study.optimize(n_jobs=2)`` in this process (short trials only: on CPU-bound
  trials its threads share one GIL).
- Ray Tune: ``Tuner`` with ``OptunaSearch`` (same storage class), ``max_concurrent_trials=2``, on the
  Ray instance shoal's ray backend started, actors reused, its automatic loggers off.

Short trials (a 10 ms sleeping objective: dispatch cost dominates) run once per seed (``--seeds``,
default 3): throughput (fastest and median) and search quality (median over seeds of the best value
found, the issue's figure) for every system; beside it, the median over ``--quality-seeds`` seeds
(default 12: seeds 4 to 12 add short searches that count for quality only, ~1 min; Ray Tune keeps
``--seeds``), with what explains quality apart from luck: how many trials were sampled but
not yet told at each sampling (read back from the journal; 2 Optuna processes: 0.5). CPU-bound trials (a busy loop on the thread's CPU time) run ``--repeats``
times: parallel efficiency is ``trials x seconds / 2`` over the wall time. Writes ``tuning.json``/``.png``.

Every system samples with Optuna's own ``TPESampler(seed=...)`` (shoal's "tpe" strategy builds the
same, Optuna's defaults included), so a quality gap compares the search loops, not two samplers.

Read a quality gap with care: the best of one seed varies far more than the systems differ, and
the seeds are the same in every run (each fixes a search's first 10 random trials), so reruns repeat
much of the same luck: ``--quality-seeds 48`` or more narrows the interval enough to read. In a
sequential simulation of Optuna 5's default TPE on the same space (no timing involved; 192 seeds of
200 trials), 0, 1, 2 and 3 trials untold at each sampling gave median bests of -0.4002, -0.4013,
-0.4014 and -0.4014. The summary gives the 95% bootstrap interval of each many-seed gap.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pathlib
import statistics
import sys
import tempfile
import time

from harness import Session, bars, options, processes_behind_barrier, pyplot, timed

WORKERS = 2
SHORT_SECONDS = 0.01
SPACE = {"x": (-5.0, 10.0), "y": (0.0, 15.0)}
OPTIMUM = -0.397887  # -branin at its three minima


def score(x: float, y: float) -> float:
    """-branin(x, y): a benchmark with a known best value, so search quality can be compared."""
    a, b, c, r, s, t = 1.0, 5.1 / (4 * math.pi**2), 5 / math.pi, 6.0, 10.0, 1 / (8 * math.pi)
    return -(a * (y - b * x**2 + c * x - r) ** 2 + s * (1 - t) * math.cos(x) + s)


def burn(seconds: float) -> None:
    """Busy CPU until this thread has used ``seconds`` of CPU time (contention shows as wall time)."""
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


def storage(path: pathlib.Path):
    """The storage every system gets: an Optuna journal file under shoal's queued lock."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from shoal.tuning.journal_lock import QueuedJournalLock

    return JournalStorage(JournalFileBackend(str(path), lock_obj=QueuedJournalLock(str(path))))


def outcome(seconds: float, completed: int, busy: float, best: float, journal: pathlib.Path) -> dict:
    return {"seconds": seconds, "completed": completed, "busy_s": busy, "best": best, "untold_at_sampling": untold(journal)}


def untold(journal: pathlib.Path) -> float:
    """What the sampler could not learn from, read back from the journal: at each trial's sampling (its
    first parameter written), the mean number of other trials already sampled but not yet told. Asked
    trials not yet sampled carry no information, so they do not count (TPE ignores them too)."""
    running, sampled, counts, created = set(), set(), [], 0
    with open(journal) as lines:
        for op in map(json.loads, lines):
            code = op["op_code"]  # Optuna's journal operations: 4 create trial, 5 set param, 6 set state
            if code == 4:
                if op.get("state") in (None, 0):  # RUNNING (0), or a plain create (a RUNNING trial)
                    running.add(created)
                created += 1
            elif code == 5 and op["trial_id"] not in sampled:
                counts.append(len((sampled & running) - {op["trial_id"]}))
                sampled.add(op["trial_id"])
            elif code == 6:
                (running.add if op["state"] == 0 else running.discard)(op["trial_id"])
    return statistics.mean(counts) if counts else 0.0


# -- shoal -----------------------------------------------------------------------------------------
def make_backend(engine: str):
    import shoal.backends

    if engine == "dask":
        return shoal.backends.get("dask", n_workers=WORKERS)
    return shoal.backends.get("ray", num_cpus=WORKERS)


def shoal_search(fn, project, backend, folder: pathlib.Path, study: str, trials: int, seed: int, constants: dict) -> dict:
    from shoal.tuning import Float

    space = {name: Float(low, high) for name, (low, high) in SPACE.items()} | constants
    held_path = folder / f"{project.name}-{study}.journal"
    held = storage(held_path)  # a fresh file per search and system
    seconds, result = timed(lambda: fn.tune(space, objective="max.accuracy", n_trials=trials, parallelism=WORKERS,
                                            backend=backend, project=project, study=study, seed=seed, storage=held))
    states = [t["state"] for t in result.trials]
    assert states == ["complete"] * trials, f"shoal {study}: trials not all complete: {set(states)}"
    project.flush()
    runs = project.runs.list(parent=result.parent, state="completed", limit=None)
    assert len(runs) == trials, f"shoal {study}: {len(runs)} of {trials} trials recorded as completed runs"
    assert {t["run"] for t in result.trials} == {r.uid for r in runs}, f"shoal {study}: trials and recorded runs differ"
    return outcome(seconds, len(runs), sum(r.results["busy_s"] for r in runs), result.best_value, held_path)


def measure_shoal(engine: str, backend, args, folder: pathlib.Path) -> dict:
    import shoal

    project = shoal.Project(folder / f"project-{engine}", name=f"shoal-{engine}")
    fn_short, fn_cpu = shoal.function(short), shoal.function(cpu)
    shoal_search(fn_short, project, backend, folder, "warm-short", 6, 0, {})  # warm: code shipped, optuna imported
    shoal_search(fn_cpu, project, backend, folder, "warm-cpu", WORKERS, 0, {"seconds": 0.05})
    found = {
        "short": [shoal_search(fn_short, project, backend, folder, f"short-{s}", args.short_trials, s, {})
                  for s in quality_seeds(args)],
        "cpu": [shoal_search(fn_cpu, project, backend, folder, f"cpu-{i}", args.cpu_trials, i, {"seconds": args.cpu_seconds})
                for i in range(args.repeats)],
    }
    project.close()
    return found


# -- plain Optuna ----------------------------------------------------------------------------------
def optuna_objective(work, busy: list):
    def objective(trial) -> float:
        result = work(*(trial.suggest_float(name, low, high) for name, (low, high) in SPACE.items()))
        busy.append(result["busy_s"])  # list.append is atomic: safe from Optuna's threads
        return result["accuracy"]

    return objective


def optuna_worker(path: str, study: str, trials: int, seed: int, cpu_seconds: float | None, barrier, out) -> None:
    """One of Optuna's worker processes: optimise the shared study until it holds ``trials``."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    made = optuna.load_study(study_name=study, storage=storage(pathlib.Path(path)),
                             sampler=optuna.samplers.TPESampler(seed=seed))
    work = short if cpu_seconds is None else (lambda x, y: cpu(x, y, cpu_seconds))
    busy: list[float] = []
    barrier.wait()
    made.optimize(optuna_objective(work, busy), n_trials=trials,
                  callbacks=[optuna.study.MaxTrialsCallback(trials, states=None)])
    out.put(sum(busy))


def optuna_processes(folder: pathlib.Path, study: str, trials: int, seed: int, cpu_seconds: float | None) -> dict:
    import optuna

    path = folder / f"{study}.journal"
    optuna.create_study(study_name=study, storage=storage(path), direction="maximize")
    args = [(str(path), study, trials, seed * 1000 + i, cpu_seconds) for i in range(WORKERS)]
    seconds, busy_per_worker = processes_behind_barrier(optuna_worker, args)
    busy = sum(busy_per_worker)
    made = optuna.load_study(study_name=study, storage=storage(path))
    completed = sum(t.state.name == "COMPLETE" for t in made.get_trials(deepcopy=False))
    assert completed >= trials, f"optuna processes {study}: {completed} of {trials} trials complete"
    return outcome(seconds, completed, busy, made.best_value, path)


def optuna_threads(folder: pathlib.Path, study: str, trials: int, seed: int) -> dict:
    import optuna

    busy: list[float] = []
    path = folder / f"{study}.journal"
    made = optuna.create_study(study_name=study, storage=storage(path), direction="maximize",
                               sampler=optuna.samplers.TPESampler(seed=seed))
    seconds, _ = timed(lambda: made.optimize(optuna_objective(short, busy), n_trials=trials, n_jobs=WORKERS))
    completed = sum(t.state.name == "COMPLETE" for t in made.get_trials(deepcopy=False))
    assert completed == trials, f"optuna threads {study}: {completed} of {trials} trials complete"
    return outcome(seconds, completed, sum(busy), made.best_value, path)


def measure_optuna(args, folder: pathlib.Path) -> dict:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    optuna_threads(folder, "warm-threads", 6, 0)
    return {
        "optuna processes": {
            "short": [optuna_processes(folder, f"p-short-{s}", args.short_trials, s, None) for s in quality_seeds(args)],
            "cpu": [optuna_processes(folder, f"p-cpu-{i}", args.cpu_trials, i, args.cpu_seconds) for i in range(args.repeats)],
        },
        "optuna threads": {"short": [optuna_threads(folder, f"t-short-{s}", args.short_trials, s) for s in quality_seeds(args)]},
    }


# -- Ray Tune --------------------------------------------------------------------------------------
def tune_trainable(config: dict) -> None:
    from ray import tune

    work = short(config["x"], config["y"]) if config["seconds"] is None else cpu(config["x"], config["y"], config["seconds"])
    tune.report(work)


def raytune_search(folder: pathlib.Path, study: str, trials: int, seed: int, seconds: float | None) -> dict:
    import optuna
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    path = folder / f"{study}.journal"
    searcher = OptunaSearch(metric="accuracy", mode="max", study_name=study, storage=storage(path),
                            sampler=optuna.samplers.TPESampler(seed=seed))
    space = {name: tune.uniform(low, high) for name, (low, high) in SPACE.items()} | {"seconds": seconds}
    tuner = tune.Tuner(
        tune_trainable, param_space=space,
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=trials, max_concurrent_trials=WORKERS, reuse_actors=True),
        run_config=tune.RunConfig(name=study, storage_path=str(folder / "ray_results"), verbose=0),
    )
    elapsed, grid = timed(tuner.fit)
    metrics = [r.metrics for r in grid if r.error is None and "accuracy" in (r.metrics or {})]
    assert len(metrics) == trials, f"ray tune {study}: {len(metrics)} of {trials} trials completed"
    return outcome(elapsed, len(metrics), sum(m["busy_s"] for m in metrics), max(m["accuracy"] for m in metrics), path)


def measure_raytune(args, folder: pathlib.Path) -> dict:
    """On the Ray instance connected in this process (shoal's ray backend, still open)."""
    import ray

    assert ray.is_initialized(), "Ray Tune runs on the ray backend's instance: open it first"
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    for name in ("ray", "ray.tune", "ray.train"):
        logging.getLogger(name).setLevel(logging.ERROR)
    raytune_search(folder, "rt-warm", 6, 0, None)
    return {
        "short": [raytune_search(folder, f"rt-short-{s}", args.short_trials, s, None) for s in seeds(args)],
        "cpu": [raytune_search(folder, f"rt-cpu-{i}", args.cpu_trials, i, args.cpu_seconds) for i in range(args.repeats)],
    }


# -- summary ---------------------------------------------------------------------------------------
def seeds(args) -> list[int]:
    """The seeds of the short searches that give throughput and the 3-seed quality figure."""
    return list(range(1, args.seeds + 1))


def quality_seeds(args) -> list[int]:
    """Every short search's seed: ``seeds`` first, then those that count for quality only."""
    return list(range(1, max(args.seeds, args.quality_seeds) + 1))


def median_gap_interval(mine: list[float], base: list[float], resamples: int = 4000) -> tuple[float, float]:
    """95% bootstrap interval of median(mine) - median(base), each system's seeds resampled on their
    own (their seeds draw different random streams, so they are not pairs): how far apart the two
    medians may be by luck alone."""
    import random

    draw = random.Random(0)
    gaps = sorted(statistics.median(draw.choices(mine, k=len(mine))) - statistics.median(draw.choices(base, k=len(base)))
                  for _ in range(resamples))
    return gaps[int(0.025 * resamples)], gaps[int(0.975 * resamples) - 1]


def summarise(found: dict, args) -> dict:
    """Per workload: throughput (fastest and median search of the first ``--seeds``), best values
    (median of those, and of every seed), efficiency."""
    out = {}
    every = found["short"]
    short_rows = every[: args.seeds]
    rates = [r["completed"] / r["seconds"] for r in short_rows]
    out["short"] = {
        "trials": args.short_trials, "searches": every, "trials_per_s": max(rates),
        "trials_per_s_median": statistics.median(rates), "best_values": [r["best"] for r in short_rows],
        "median_best": statistics.median(r["best"] for r in short_rows),
        "quality_seeds": len(every), "median_best_all_seeds": statistics.median(r["best"] for r in every),
        "untold_at_sampling": statistics.mean(r["untold_at_sampling"] for r in every),
        "occupancy": max(r["busy_s"] / (r["seconds"] * WORKERS) for r in short_rows),
    }
    if "cpu" in found:
        ideal = args.cpu_trials * args.cpu_seconds / WORKERS
        fastest = min(found["cpu"], key=lambda r: r["seconds"])
        out["cpu"] = {
            "trials": args.cpu_trials, "searches": found["cpu"], "ideal_s": ideal, "seconds": fastest["seconds"],
            "parallel_efficiency": ideal * fastest["completed"] / args.cpu_trials / fastest["seconds"],
            "occupancy": fastest["busy_s"] / (fastest["seconds"] * WORKERS),
            "mean_trial_s": fastest["busy_s"] / max(1, fastest["completed"]),
        }
    return out


def describe(name: str, result: dict) -> str:
    s = result["short"]
    line = (f"{name:17s} short: {s['trials_per_s']:6.1f} trials/s (median {s['trials_per_s_median']:.1f}); "
            f"median best {s['median_best']:.4f} (optimum {OPTIMUM}; per seed "
            + ", ".join(f"{v:.4f}" for v in s["best_values"]) + f"), {s['quality_seeds']} seeds: {s['median_best_all_seeds']:.4f}; "
            f"{s['untold_at_sampling']:.2f} trials untold at each sampling")
    if "cpu" in result:
        c = result["cpu"]
        line += (f"; CPU-bound: {c['seconds']:.2f} s vs ideal {c['ideal_s']:.2f} s, efficiency {c['parallel_efficiency']:.2f} "
                 f"(trials took {c['mean_trial_s']:.2f} s each, slots busy {c['occupancy']:.0%})")
    return line


def plot(report: dict, path) -> None:
    plt = pyplot()
    systems = report["systems"]
    names = [n.replace(" ", "\n", 1) for n in systems]
    colors = ["#3b75af" if n.startswith("shoal") else "#999999" for n in systems]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    bars(axes[0], names, [r["short"]["trials_per_s"] for r in systems.values()], colors, "{:.0f}")
    axes[0].set_title(f"{report['short_trials']} trials of {SHORT_SECONDS * 1e3:g} ms, parallelism {WORKERS}: trials/s", fontsize=9)
    bars(axes[1], names, [OPTIMUM - r["short"]["median_best"] for r in systems.values()], colors, "{:.3f}")
    axes[1].set_title(f"regret (optimum - median best of {report['seeds']} seeds), lower is better", fontsize=9)
    cpu_systems = {n: r for n, r in systems.items() if "cpu" in r}
    bars(axes[2], [n.replace(" ", "\n", 1) for n in cpu_systems], [r["cpu"]["parallel_efficiency"] for r in cpu_systems.values()],
         ["#3b75af" if n.startswith("shoal") else "#999999" for n in cpu_systems])
    axes[2].set_ylim(0, 1.1)
    axes[2].set_title(f"{report['cpu_trials']} CPU-bound trials of {report['cpu_seconds']:g} s: efficiency", fontsize=9)
    fig.suptitle(f"same journal storage and lock for all; load average {report['machine']['load_average']} -> "
                 f"{report['machine']['load_average_end']}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def add(parser) -> None:
    parser.add_argument("--short-trials", type=int, default=200)
    parser.add_argument("--seeds", type=int, default=3, help="short searches per system, one per seed")
    parser.add_argument("--quality-seeds", type=int, default=12,
                        help="short searches per system for the quality median (the first --seeds included)")
    parser.add_argument("--cpu-trials", type=int, default=40)
    parser.add_argument("--cpu-seconds", type=float, default=0.5)
    parser.add_argument("--engines", default="dask,ray")
    parser.add_argument("--skip-raytune", action="store_true", help="do not run the Ray Tune comparison")


def main() -> int:
    args = options(__doc__, {"short_trials": 20, "cpu_trials": 4, "cpu_seconds": 0.1, "seeds": 3, "quality_seeds": 3,
                             "skip_raytune": True}, add, repeats=1)
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    if min(args.short_trials, args.cpu_trials, args.seeds, args.quality_seeds) < 1 or args.cpu_seconds <= 0:
        args.parser.error("--short-trials, --cpu-trials, --seeds and --quality-seeds must be >= 1 and --cpu-seconds > 0")
    if not engines or not set(engines) <= {"dask", "ray"}:
        args.parser.error(f"--engines takes dask and/or ray, got {args.engines!r}")
    session = Session("tuning", args)
    systems: dict = {}

    def record(found: dict) -> None:
        for name, result in found.items():
            systems[name] = summarise(result, args)
            print(describe(name, systems[name]), flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        folder = pathlib.Path(tmp)
        record(measure_optuna(args, folder))
        for engine in engines:
            with make_backend(engine) as backend:
                record({f"shoal {engine}": measure_shoal(engine, backend, args, folder)})
                if engine == "ray" and not args.skip_raytune:
                    record({"ray tune": measure_raytune(args, folder)})
        if "ray tune" not in systems and not args.skip_raytune:
            import shoal.backends

            with shoal.backends.get("ray", num_cpus=WORKERS).start():  # a Ray instance for Ray Tune alone
                record({"ray tune": measure_raytune(args, folder)})
    base = systems["optuna processes"]
    ratios = {}
    for name in (n for n in systems if n.startswith("shoal")):
        mine = systems[name]
        ratios[name] = {
            "vs_optuna_processes_short": mine["short"]["trials_per_s"] / base["short"]["trials_per_s"],
            "vs_optuna_threads_short": mine["short"]["trials_per_s"] / systems["optuna threads"]["short"]["trials_per_s"],
            "median_best_minus_optuna_processes": mine["short"]["median_best"] - base["short"]["median_best"],
            "median_best_all_seeds_minus_optuna_processes": (mine["short"]["median_best_all_seeds"]
                                                             - base["short"]["median_best_all_seeds"]),
            "efficiency_vs_optuna_processes": mine["cpu"]["parallel_efficiency"] / base["cpu"]["parallel_efficiency"],
            "median_best_all_seeds_gap_interval_95": median_gap_interval(
                [r["best"] for r in mine["short"]["searches"]], [r["best"] for r in base["short"]["searches"]]),
        }
        if "ray tune" in systems:
            ratios[name]["vs_raytune_short"] = mine["short"]["trials_per_s"] / systems["ray tune"]["short"]["trials_per_s"]
        r = ratios[name]
        print(f"{name}: {mine['short']['trials_per_s']:.1f} trials/s (target >= 180) = {r['vs_optuna_processes_short']:.2f}x "
              f"Optuna's processes, {r['vs_optuna_threads_short']:.2f}x its threads"
              + (f", {r['vs_raytune_short']:.2f}x Ray Tune" if "vs_raytune_short" in r else "")
              + f"; median best {mine['short']['median_best']:.4f} vs Optuna's processes {base['short']['median_best']:.4f} "
              f"({mine['short']['quality_seeds']} seeds: {mine['short']['median_best_all_seeds']:.4f} vs "
              f"{base['short']['median_best_all_seeds']:.4f}, gap {r['median_best_all_seeds_minus_optuna_processes']:+.4f}, "
              "95% bootstrap interval {:+.4f} to {:+.4f}); ".format(*r["median_best_all_seeds_gap_interval_95"])
              + f"CPU-bound efficiency {mine['cpu']['parallel_efficiency']:.2f} (target >= 0.93; Optuna's processes "
              f"{base['cpu']['parallel_efficiency']:.2f})", flush=True)
    session.write({"workers": WORKERS, "short_trials": args.short_trials, "short_seconds": SHORT_SECONDS, "seeds": args.seeds,
                   "quality_seeds": max(args.seeds, args.quality_seeds),
                   "cpu_trials": args.cpu_trials, "cpu_seconds": args.cpu_seconds, "optimum": OPTIMUM,
                   "storage": "optuna journal file, shoal's QueuedJournalLock, one fresh file per search",
                   "systems": systems, "ratios": ratios}, plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
