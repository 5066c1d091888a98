"""Which local study storage holds up under parallel writers: SQLite (WAL) or an Optuna journal file?

N processes ask and tell trials of one study at once (random sampler, one float parameter, no
objective work) so that only the storage is measured. Prints trials per second and errors per
storage and writer count; writes perf/results/tuning_storage.json.

    python perf/tuning_storage.py [--trials-per-writer 60] [--writers 1 2 4 8]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import pathlib
import sqlite3
import tempfile
import time


def _storage(kind: str, path: str):
    import optuna

    if kind == "sqlite":
        return optuna.storages.RDBStorage(
            f"sqlite:///{path}", engine_kwargs={"connect_args": {"timeout": 60}}, skip_compatibility_check=True
        )
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    return JournalStorage(JournalFileBackend(path))


def _writer(kind: str, path: str, trials: int, start, out) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = _storage(kind, path)
    study = optuna.load_study(study_name="bench", storage=storage, sampler=optuna.samplers.RandomSampler())
    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}
    errors = 0
    start.wait()
    for _ in range(trials):
        try:
            trial = study.ask(dist)
            trial.set_user_attr("shoal", {"run": "0" * 32})
            study.tell(trial, trial.params["x"] ** 2)
        except Exception:  # noqa: BLE001 - counted: a storage that errors under contention loses
            errors += 1
    out.put(errors)


def measure(kind: str, writers: int, trials: int, folder: pathlib.Path) -> dict:
    import optuna

    path = str(folder / f"{kind}-{writers}.{'db' if kind == 'sqlite' else 'journal'}")
    if kind == "sqlite":
        sqlite3.connect(path).execute("PRAGMA journal_mode=WAL").fetchall()
    optuna.create_study(study_name="bench", storage=_storage(kind, path))
    ctx = mp.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(kind, path, trials, start, out)) for _ in range(writers)]
    for proc in procs:
        proc.start()
    time.sleep(3.0)  # let every process import optuna and open the storage
    began = time.perf_counter()
    start.set()
    errors = sum(out.get() for _ in procs)
    elapsed = time.perf_counter() - began
    for proc in procs:
        proc.join()
    done = len(optuna.load_study(study_name="bench", storage=_storage(kind, path)).get_trials(deepcopy=False))
    return {
        "storage": kind,
        "writers": writers,
        "trials": done,
        "errors": errors,
        "seconds": round(elapsed, 3),
        "trials_per_s": round(done / elapsed, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials-per-writer", type=int, default=60)
    parser.add_argument("--writers", type=int, nargs="+", default=[1, 2, 4, 8])
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for writers in args.writers:
            for kind in ("sqlite", "journal"):
                row = measure(kind, writers, args.trials_per_writer, pathlib.Path(tmp))
                rows.append(row)
                print(json.dumps(row), flush=True)
    out = pathlib.Path(__file__).parent / "results" / "tuning_storage.json"
    out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
