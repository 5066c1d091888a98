"""Which local study storage holds up under parallel writers: SQLite (WAL) or an Optuna journal file?

    python perf/tuning_storage.py [--trials-per-writer 60] [--writers 1 2 4 8] [--quick] [--out DIR]

N processes ask and tell trials of one study at once (random sampler, one float parameter, no
objective work) so that only the storage is measured; they start together behind a
``multiprocessing.Barrier`` once every one has imported Optuna and opened the storage. Prints trials
per second and errors per storage and writer count (the median over ``--repeats`` rounds); writes
``tuning_storage.json``/``.png``.
"""

from __future__ import annotations

import pathlib
import sqlite3
import statistics
import sys
import tempfile

from harness import Session, options, processes_behind_barrier, pyplot

KINDS = ("sqlite", "journal")


def _storage(kind: str, path: str):
    import optuna

    if kind == "sqlite":
        return optuna.storages.RDBStorage(
            f"sqlite:///{path}", engine_kwargs={"connect_args": {"timeout": 60}}, skip_compatibility_check=True
        )
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    return JournalStorage(JournalFileBackend(path))


def _writer(kind: str, path: str, trials: int, barrier, out) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = _storage(kind, path)
    study = optuna.load_study(study_name="bench", storage=storage, sampler=optuna.samplers.RandomSampler())
    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}
    errors = 0
    barrier.wait()
    for _ in range(trials):
        try:
            trial = study.ask(dist)
            trial.set_user_attr("shoal", {"run": "0" * 32})
            study.tell(trial, trial.params["x"] ** 2)
        except Exception:  # noqa: BLE001 - counted: a storage that errors under contention loses
            errors += 1
    out.put(errors)


def measure(kind: str, writers: int, trials: int, folder: pathlib.Path, round_: int) -> dict:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    path = str(folder / f"{kind}-{writers}-{round_}.{'db' if kind == 'sqlite' else 'journal'}")
    if kind == "sqlite":
        sqlite3.connect(path).execute("PRAGMA journal_mode=WAL").fetchall()
    optuna.create_study(study_name="bench", storage=_storage(kind, path))
    elapsed, errors_per_writer = processes_behind_barrier(_writer, [(kind, path, trials)] * writers)
    errors = sum(errors_per_writer)
    done = len(optuna.load_study(study_name="bench", storage=_storage(kind, path)).get_trials(deepcopy=False))
    return {"trials": done, "errors": errors, "seconds": elapsed, "trials_per_s": done / elapsed}


def plot(report: dict, path) -> None:
    plt = pyplot()
    fig, axis = plt.subplots(figsize=(6, 3.6))
    for kind in KINDS:
        rows = [r for r in report["rows"] if r["storage"] == kind]
        axis.plot([r["writers"] for r in rows], [r["trials_per_s"] for r in rows], marker="o", label=kind)
    axis.set_xlabel("writer processes")
    axis.set_ylabel("trials per second (all writers)")
    axis.set_title(f"ask + tell, {report['trials_per_writer']} trials per writer", fontsize=9)
    axis.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def add(parser) -> None:
    parser.add_argument("--trials-per-writer", type=int, default=60)
    parser.add_argument("--writers", type=int, nargs="+", default=[1, 2, 4, 8])


def main() -> int:
    args = options(__doc__, {"trials_per_writer": 10, "writers": [2]}, add, repeats=1)
    session = Session("tuning_storage", args)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for writers in args.writers:
            for kind in KINDS:
                rounds = [measure(kind, writers, args.trials_per_writer, pathlib.Path(tmp), i) for i in range(args.repeats)]
                row = {"storage": kind, "writers": writers, "errors": sum(r["errors"] for r in rounds),
                       "trials": rounds[0]["trials"], "trials_per_s": statistics.median(r["trials_per_s"] for r in rounds),
                       "rounds": rounds}
                rows.append(row)
                print(f"{kind:8s} {writers} writers: {row['trials_per_s']:.1f} trials/s, {row['errors']} errors", flush=True)
    session.write({"trials_per_writer": args.trials_per_writer, "rows": rows}, plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
