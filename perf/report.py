"""Cost of one intermediate report in a tuning trial: shoal's ``ctx.report`` (and Optuna's own
``trial.report`` on ``ctx.trial``) against plain Optuna's ``trial.report`` + ``trial.should_prune``,
on the same study storage.

    python perf/report.py [--trials 12] [--steps 100] [--repeats 7] [--storages journal,memory]
                          [--profile] [--quick] [--out DIR]

Every system runs the same objective: N trials of S steps, each step one report and one pruning
check (``MedianPruner()``, Optuna's default, for all), with no compute between them. Every trial
reports the same curve, so the pruner does its full work at every step yet prunes nothing, and every
system makes exactly N x S reports.

- optuna: ``study.optimize(objective, n_trials=N)``, ``trial.report`` then ``trial.should_prune``.
- shoal ctx.report: ``shoal.tune`` on the local backend (in-process), parallelism 1; ``ctx.report``
  reports and checks pruning; every trial is a recorded run whose metric ``objective`` holds the
  curve (checked).
- shoal trial.report: the same with an objective written for Optuna, ``def objective(trial)``, where
  shoal accepts that form; else the handler calls ``trial.report``/``trial.should_prune`` on
  ``ctx.trial`` (the JSON says which).

Storages: ``journal``: the storage shoal's driver opens for a project on SQLite (its default: an
Optuna journal file under shoal's queued lock), and plain Optuna is handed that same storage object;
``memory``: ``InMemoryStorage``; ``sqlite``: an Optuna RDB storage on a SQLite file (slow: each
report is a commit). The per-report cost is the objective's own timing of its loop (wall clock and
its thread's CPU time) divided by the reports it made; trial dispatch is not part of it. Systems run
interleaved, in a rotating order, ``--repeats`` times; each system's fastest repeat counts (the
least disturbed on a shared machine, as in perf/tuning.py), and the median of the ratios taken
within each repeat is printed beside it. Target: shoal's per-report cost within 1.2x of Optuna's on the same
storage. ``--profile`` adds a cProfile of shoal's ctx.report loop (the top entries are printed).
Writes ``perf/results/report.json`` and ``report.png``.
"""

from __future__ import annotations

import cProfile
import io
import pathlib
import pstats
import statistics
import sys
import tempfile
import time

from harness import Session, options, pyplot

TARGET = 1.2
SYSTEMS = ("optuna", "shoal ctx.report", "shoal trial.report")


def curve(step: int) -> float:
    """The same for every trial: the median pruner compares against equal values and never prunes."""
    return 0.01 * step


def loop_result(score: float, began: float, cpu: float, calls: int) -> dict:
    return {"score": score, "loop_s": time.perf_counter() - began, "loop_cpu_s": time.thread_time() - cpu, "calls": calls}


# -- the objectives ---------------------------------------------------------------------------------
def by_ctx(ctx, x: float, steps: int = 10, profile: str = "") -> dict:
    """shoal: ctx.report (which also checks pruning)."""
    profiler = cProfile.Profile() if profile else None
    if profiler is not None:
        profiler.enable()
    began, cpu = time.perf_counter(), time.thread_time()
    for step in range(steps):
        ctx.report(curve(step), step)
    result = loop_result(x, began, cpu, steps)
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(profile)
    return result


def by_ctx_trial(ctx, x: float, steps: int = 10) -> dict:
    """shoal, when the Optuna form is not accepted: Optuna's calls on ctx.trial."""
    import optuna

    trial = ctx.trial
    began, cpu = time.perf_counter(), time.thread_time()
    for step in range(steps):
        trial.report(curve(step), step)
        if trial.should_prune():
            raise optuna.TrialPruned()
    return loop_result(x, began, cpu, steps)


def make_optuna_objective(steps: int, timings: list):
    """Plain Optuna's objective (and shoal's Optuna-form one): times its loop into ``timings``."""

    def objective(trial) -> float:
        import optuna

        x = trial.suggest_float("x", 0.0, 1.0)
        began, cpu = time.perf_counter(), time.thread_time()
        for step in range(steps):
            trial.report(curve(step), step)
            if trial.should_prune():
                raise optuna.TrialPruned()
        timings.append(loop_result(x, began, cpu, steps))
        return x

    return objective


# -- the systems ------------------------------------------------------------------------------------
def pruner():
    import optuna

    return optuna.pruners.MedianPruner()


def per_report(timings: list[dict]) -> dict:
    calls = sum(t["calls"] for t in timings)
    return {
        "reports": calls,
        "us_per_report": 1e6 * sum(t["loop_s"] for t in timings) / calls,
        "cpu_us_per_report": 1e6 * sum(t["loop_cpu_s"] for t in timings) / calls,
    }


def run_optuna(storage, study: str, trials: int, steps: int) -> dict:
    import optuna

    timings: list[dict] = []
    made = optuna.create_study(study_name=study, storage=storage, direction="maximize", pruner=pruner())
    began = time.perf_counter()
    made.optimize(make_optuna_objective(steps, timings), n_trials=trials)
    wall = time.perf_counter() - began
    frozen = made.get_trials(deepcopy=False)
    assert [t.state.name for t in frozen] == ["COMPLETE"] * trials, "optuna: every trial must complete"
    assert all(len(t.intermediate_values) == steps for t in frozen)
    return {**per_report(timings), "wall_s": wall}


def run_shoal(storage, project, study: str, trials: int, steps: int, form: str, profile: str = "") -> dict:
    import shoal
    from shoal.tuning import Float

    began = time.perf_counter()
    if form == "optuna":  # def objective(trial): shoal hands it the trial
        timings: list[dict] = []
        result = shoal.tune(make_optuna_objective(steps, timings), n_trials=trials, direction="maximize",
                            pruner=pruner(), parallelism=1, backend="local", storage=storage, project=project,
                            study=study)
    else:
        handler = by_ctx if form == "ctx" else by_ctx_trial
        constants = {"steps": steps, **({"profile": profile} if profile else {})}
        result = shoal.function(handler).tune(
            {"x": Float(0.0, 1.0), **constants}, objective="max.score", n_trials=trials, pruner=pruner(),
            parallelism=1, backend="local", storage=storage, project=project, study=study,
        )
    wall = time.perf_counter() - began
    project.flush()
    runs = project.runs.list(parent=result.parent, limit=None)
    assert len(runs) == trials and {r.state for r in runs} == {"completed"}, f"shoal {study}: runs {[r.state for r in runs]}"
    expected = [[step, curve(step)] for step in range(steps)]
    assert all(r.metrics.get("objective") == expected for r in runs), f"shoal {study}: a run's metric series is incomplete"
    if form != "optuna":
        timings = [r.results for r in runs]
    return {**per_report(timings), "wall_s": wall}


def optuna_form_accepted(project, storage) -> tuple[bool, str]:
    """Whether ``shoal.tune`` takes ``def objective(trial)`` as written (another change adds it)."""
    try:
        run_shoal(storage, project, "probe-optuna-form", 1, 2, "optuna")
    except Exception as exc:  # noqa: BLE001 - any refusal: measure the ctx.trial form instead
        return False, f"{type(exc).__name__}: {exc}"[:300]
    return True, ""


def open_storage(kind: str, project, folder: pathlib.Path):
    """The storage object both systems use for one kind."""
    import optuna

    from shoal.tuning.storage import StorageRef, default_ref

    if kind == "journal":
        assert project.database.startswith("sqlite"), "the journal default needs the project on SQLite"
        return default_ref(project).open(heartbeat=True)  # the very object shoal's driver opens
    if kind == "memory":
        return optuna.storages.InMemoryStorage()
    if kind == "sqlite":
        return StorageRef("rdb", f"sqlite:///{folder / 'studies.db'}").open(heartbeat=True)
    raise ValueError(kind)


def measure(args) -> dict:
    import optuna

    import shoal

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    out: dict = {}
    with tempfile.TemporaryDirectory() as folder:
        folder = pathlib.Path(folder)
        project = shoal.Project(folder, name="perf")
        probe_storage = open_storage("memory", project, folder)
        accepted, why = optuna_form_accepted(project, probe_storage)
        out["optuna_form"] = {"accepted": accepted, "refused_with": why or None}
        trial_form = "optuna" if accepted else "ctx.trial"
        print(f"shoal trial.report measured through {'def objective(trial)' if accepted else 'ctx.trial'}"
              + ("" if accepted else f" (the Optuna form is refused: {why[:120]})"), flush=True)
        for kind in args.storages:
            storage = open_storage(kind, project, folder)
            steps = max(2, args.steps // 5) if kind == "sqlite" else args.steps
            runners = {
                "optuna": lambda name, trials, storage=storage, steps=steps: run_optuna(storage, name, trials, steps),
                "shoal ctx.report": lambda name, trials, storage=storage, steps=steps: run_shoal(
                    storage, project, name, trials, steps, "ctx"),
                "shoal trial.report": lambda name, trials, storage=storage, steps=steps: run_shoal(
                    storage, project, name, trials, steps, "optuna" if accepted else "trial"),
            }
            for system, call in runners.items():  # warm: imports, storage, code paths
                call(f"warm-{kind}-{system}", 2)
            repeats = []
            for repeat in range(args.repeats):
                order = list(SYSTEMS[repeat % 3:] + SYSTEMS[:repeat % 3])
                measured = {system: runners[system](f"{kind}-{system}-{repeat}", args.trials) for system in order}
                measured["order"] = order
                repeats.append(measured)
                print(f"  {kind} repeat {repeat + 1}: " + ", ".join(
                    f"{s} {measured[s]['us_per_report']:.1f} us" for s in SYSTEMS), flush=True)
            summary = {"steps": steps, "trials": args.trials, "repeats": repeats}
            for system in SYSTEMS:  # the fastest repeat: the least disturbed by the machine's other load
                summary[system] = {key: min(r[system][key] for r in repeats) for key in ("us_per_report", "cpu_us_per_report", "wall_s")}
            fastest = summary["optuna"]
            for system in SYSTEMS[1:]:
                within = [r[system]["us_per_report"] / r["optuna"]["us_per_report"] for r in repeats]
                summary[system].update(
                    ratio=summary[system]["us_per_report"] / fastest["us_per_report"],
                    cpu_ratio=summary[system]["cpu_us_per_report"] / fastest["cpu_us_per_report"],
                    wall_ratio=summary[system]["wall_s"] / fastest["wall_s"],
                    ratio_median_within_repeats=statistics.median(within),
                    ratios_within_repeats=within,
                )
            out[kind] = summary
        if args.profile:
            out["profile"] = profile(project, open_storage(args.storages[0], project, folder), args, folder)
        project.close()
    out["trial_form"] = trial_form
    return out


def profile(project, storage, args, folder: pathlib.Path) -> list[str]:
    """cProfile of shoal's ctx.report loop in one trial (the handler's own thread)."""
    path = folder / "report.prof"
    run_shoal(storage, project, "profile", 1, args.steps, "ctx", profile=str(path))
    text = io.StringIO()
    pstats.Stats(str(path), stream=text).sort_stats("tottime").print_stats(15)
    lines = [line for line in text.getvalue().splitlines() if line.strip()]
    print("\n".join(lines), flush=True)
    return lines


# -- report -----------------------------------------------------------------------------------------
def plot(report: dict, path) -> None:
    plt = pyplot()
    kinds = [k for k in report["storages"] if k in report]
    fig, axes = plt.subplots(1, len(kinds), figsize=(4.2 * len(kinds), 3.8), squeeze=False)
    labels = ["optuna\ntrial.report", "shoal\nctx.report", f"shoal\ntrial.report\n({report['trial_form']})"]
    for axis, kind in zip(axes[0], kinds):
        values = [report[kind][system]["us_per_report"] for system in SYSTEMS]
        bars = axis.bar(labels, values, color=["#999999", "#3b75af", "#519e3e"])
        axis.axhline(values[0] * TARGET, color="red", linestyle="--", linewidth=1, label=f"target: {TARGET}x Optuna")
        axis.bar_label(bars, fmt="%.1f us")
        for x, system in enumerate(SYSTEMS[1:], start=1):
            axis.annotate(f"{report[kind][system]['ratio']:.2f}x", (x, values[x] / 2), ha="center", color="white", fontsize=9)
        axis.set_ylim(0, max(values + [values[0] * TARGET]) * 1.2)
        axis.set_ylabel("us per report + pruning check")
        axis.set_title(f"{kind} storage: {report[kind]['trials']} trials x {report[kind]['steps']} steps", fontsize=9)
        axis.tick_params(axis="x", labelsize=8)
        axis.legend(fontsize=8, loc="lower right")
    fig.suptitle(f"fastest of {report['repeats']} interleaved repeats; load average {report['machine']['load_average']}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def add(parser) -> None:
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--storages", default="journal,memory", help="journal, memory and/or sqlite")
    parser.add_argument("--profile", action="store_true", help="also profile shoal's ctx.report loop")


def main() -> int:
    args = options(__doc__, {"trials": 3, "steps": 20, "repeats": 1}, add, repeats=7)
    args.storages = [s.strip() for s in args.storages.split(",") if s.strip()]
    if min(args.trials, args.steps) < 1:
        args.parser.error("--trials and --steps must be >= 1")
    if not args.storages or not set(args.storages) <= {"journal", "memory", "sqlite"}:
        args.parser.error(f"--storages takes journal, memory and/or sqlite, got {args.storages!r}")
    session = Session("report", args)
    report: dict = {"storages": args.storages, "repeats": args.repeats, "pruner": "MedianPruner()", "target": TARGET}
    report.update(measure(args))
    for kind in args.storages:
        r = report[kind]
        print(f"{kind}, fastest of {args.repeats}: optuna {r['optuna']['us_per_report']:.1f} us per report "
              f"(CPU {r['optuna']['cpu_us_per_report']:.1f} us); " + "; ".join(
                  f"{s} {r[s]['us_per_report']:.1f} us = {r[s]['ratio']:.2f}x optuna (CPU {r[s]['cpu_ratio']:.2f}x; "
                  f"median within repeats {r[s]['ratio_median_within_repeats']:.2f}x)"
                  for s in SYSTEMS[1:]) + f" (target <= {TARGET}x)", flush=True)
        print(f"{kind}: whole search ({r['trials']} trials, trial dispatch and records included): optuna "
              f"{r['optuna']['wall_s']:.2f} s; " + "; ".join(
                  f"{s} {r[s]['wall_s']:.2f} s = {r[s]['wall_ratio']:.2f}x" for s in SYSTEMS[1:]), flush=True)
    session.write(report, plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
