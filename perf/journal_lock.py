"""The journal-file lock alone: shoal's queued lock (an ``flock`` queue in front of Optuna's symlink
lock) against Optuna's ``JournalFileSymlinkLock`` and ``JournalFileOpenLock``.

    python perf/journal_lock.py [--writers 1 2 4] [--appends 300] [--repeats 3] [--quick] [--out DIR]

N processes append to one journal file at once through ``JournalFileBackend(path, lock_obj=...)``
``.append_logs`` (one small log line per append, the size of a trial's ``set_trial_param``), with
nothing else to do, after a ``multiprocessing.Barrier`` so every process has started and opened the
journal. Each append is timed in its process: lock wait + write + release. Prints the median,
95th and 99th percentile and mean latency per append and the appends per second of all writers,
per lock and writer count; each figure is the median over ``--repeats`` rounds (locks interleaved
within a round). Writes ``journal_lock.json``/``.png``.
"""

from __future__ import annotations

import multiprocessing as mp
import pathlib
import statistics
import sys
import tempfile
import time

from harness import Session, options, pyplot

LOCKS = ("shoal queued", "optuna symlink", "optuna open")


def make_lock(kind: str, path: str):
    from optuna.storages.journal import JournalFileOpenLock, JournalFileSymlinkLock

    if kind == "shoal queued":
        from shoal.tuning.journal_lock import QueuedJournalLock

        return QueuedJournalLock(path)
    return JournalFileSymlinkLock(path) if kind == "optuna symlink" else JournalFileOpenLock(path)


def appender(kind: str, path: str, appends: int, writer: int, barrier, out) -> None:
    from optuna.storages.journal import JournalFileBackend

    backend = JournalFileBackend(path, lock_obj=make_lock(kind, path))
    line = {"op_code": 6, "worker_id": f"w{writer}", "trial_id": writer, "param_name": "x",
            "param_value_internal": 0.5, "distribution": '{"name": "FloatDistribution"}'}
    latencies = []
    barrier.wait()
    for _ in range(appends):
        began = time.perf_counter()
        backend.append_logs([line])
        latencies.append(time.perf_counter() - began)
    out.put(latencies)


def measure(kind: str, writers: int, appends: int, folder: pathlib.Path, round_: int) -> dict:
    path = str(folder / f"{kind.replace(' ', '-')}-{writers}-{round_}.journal")
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(writers + 1), ctx.Queue()
    procs = [ctx.Process(target=appender, args=(kind, path, appends, i, barrier, out)) for i in range(writers)]
    for proc in procs:
        proc.start()
    barrier.wait(timeout=120)
    began = time.perf_counter()
    latencies = [x for _ in procs for x in out.get(timeout=600)]
    seconds = time.perf_counter() - began
    for proc in procs:
        proc.join()
        assert proc.exitcode == 0, f"{kind}: an appending process exited with {proc.exitcode}"
    lines = pathlib.Path(path).read_text().count("\n")
    assert lines == writers * appends, f"{kind}: {lines} lines in the journal, {writers * appends} appended"
    latencies.sort()
    return {"median_ms": 1e3 * statistics.median(latencies), "p95_ms": 1e3 * latencies[int(0.95 * (len(latencies) - 1))],
            "p99_ms": 1e3 * latencies[int(0.99 * (len(latencies) - 1))],
            "mean_ms": 1e3 * statistics.fmean(latencies), "appends_per_s": len(latencies) / seconds}


def plot(report: dict, path) -> None:
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    for kind in LOCKS:
        rows = [r for r in report["rows"] if r["lock"] == kind]
        xs = [r["writers"] for r in rows]
        left.plot(xs, [r["median_ms"] for r in rows], marker="o", label=f"{kind} (median)")
        left.plot(xs, [r["p95_ms"] for r in rows], marker="x", linestyle=":", label=f"{kind} (p95)")
        right.plot(xs, [r["appends_per_s"] for r in rows], marker="o", label=kind)
    left.set_xlabel("writer processes")
    left.set_ylabel("ms per append")
    left.set_yscale("log")
    left.legend(fontsize=7)
    right.set_xlabel("writer processes")
    right.set_ylabel("appends per second (all writers)")
    right.legend(fontsize=7)
    fig.suptitle(f"journal lock, {report['appends']} appends per writer; load average {report['machine']['load_average']}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def add(parser) -> None:
    parser.add_argument("--writers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--appends", type=int, default=300)


def main() -> int:
    args = options(__doc__, {"writers": [2], "appends": 50, "repeats": 1}, add)
    if min(args.writers) < 1 or args.appends < 1:
        args.parser.error("--writers and --appends must be >= 1")
    session = Session("journal_lock", args)
    measured: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.repeats):
            for writers in args.writers:
                for kind in LOCKS[round_ % 3:] + LOCKS[:round_ % 3]:  # rotating order: no lock always first
                    measured.setdefault((kind, writers), []).append(measure(kind, writers, args.appends, pathlib.Path(tmp), round_))
    rows = []
    for (kind, writers), rounds in measured.items():
        row = {"lock": kind, "writers": writers, **{k: statistics.median(r[k] for r in rounds) for k in rounds[0]}, "rounds": rounds}
        rows.append(row)
    rows.sort(key=lambda r: (r["writers"], LOCKS.index(r["lock"])))
    for row in rows:
        base = next(r for r in rows if r["writers"] == row["writers"] and r["lock"] == "optuna symlink")
        print(f"{row['writers']} writers, {row['lock']:15s}: median {row['median_ms']:.3f} ms, p95 {row['p95_ms']:.3f} ms, "
              f"p99 {row['p99_ms']:.3f} ms, "
              f"mean {row['mean_ms']:.3f} ms per append ({row['mean_ms'] / base['mean_ms']:.2f}x the symlink lock's mean), "
              f"{row['appends_per_s']:.0f} appends/s", flush=True)
    session.write({"appends": args.appends, "rows": rows}, plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
