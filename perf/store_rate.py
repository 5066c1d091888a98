"""How many recorded runs a second the store absorbs, on SQLite and PostgreSQL, for one driver and
for 4 drivers writing into one project at once, beside a floor measured in the same run.

    python perf/store_rate.py [--runs 20000] [--drivers 4] [--databases sqlite,postgresql]
                              [--postgres URL] [--no-map] [--repeats 1] [--quick] [--out DIR]

Per database, each figure is runs per second of wall time (N runs per driver):

- ``floor``: the same rows written with plain SQLAlchemy Core, one bulk INSERT
  (``connection.execute(runs.insert(), rows)``) and one bulk UPDATE of every outcome
  (``connection.execute(update ... where uid = :b_uid, rows)``), one transaction each;
- ``store``: what a driver's bookkeeping does: ``Store.create_runs`` of the N records (one
  transaction, as ``fn.map`` does), then N outcomes handed one by one to a ``Recorder`` (as engine
  callbacks do) until all are committed;
- ``map`` (one driver only; ``--no-map`` skips it): ``fn.map`` of N no-op runs with
  ``batch_size="auto"`` on an embedded Dask cluster of 2 workers, every run recorded: the issue's
  figure, engine and dispatch included.

With ``--drivers K`` the floor and the store path also run in K spawned processes at once into one
project (timed from a barrier, imports and set-up excluded): K x N runs over the wall time. Floor
and store alternate within each repeat. On PostgreSQL it first prints (and records) how many dead
row versions the ``runs`` table holds: with autovacuum off they pile up and slow every write down,
so by default the script measures in a scratch database it creates on the server and drops at the
end (``--postgres URL`` measures in a given database instead). Writes
``store_rate.json``/``.png``. Targets (issue 19, 2 cores): >= 10,000 recorded runs/s and within 2x of
the floor, on both databases.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

from harness import Session, bars, options, processes_behind_barrier, pyplot, ratio_line, timed

SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432"
HASH = "a" * 64


def noop(x: int = 0) -> int:
    return x


def records(count: int, parent: str) -> list[dict[str, Any]]:
    """Run records as a map makes them (what the floor inserts too)."""
    return [
        {"uid": uuid.uuid4().hex, "function": "noop", "function_hash": HASH, "params": {"x": i}, "parent": parent,
         "iteration": i, "backend": "dask", "labels": {}, "inputs": {}}
        for i in range(count)
    ]  # fmt: skip


def outcome(i: int) -> dict[str, Any]:
    """The fields a finished no-op run records (as ``shoal.dispatch`` hands them over)."""
    now = datetime.now(timezone.utc)
    return {"state": "completed", "results": {"return": i}, "metrics": {}, "logs": "", "error": None,
            "attempts": 1, "started_at": now, "ended_at": now}  # fmt: skip


def open_store(url: str, project: str):
    from shoal.store import Store

    return Store(url, project=project)  # migrated schema, the store's engine settings


def floor_once(store, count: int) -> float:
    """Seconds to write ``count`` runs and their outcomes with one bulk INSERT and one bulk UPDATE."""
    import sqlalchemy as sa

    from shoal.store.schema import runs

    project = store.project
    now = datetime.now(timezone.utc)
    template = {"project": project, "state": "pending", "results": {}, "metrics": {}, "error": None, "logs": "",
                "attempts": 0, "created_at": now, "started_at": None, "ended_at": None, "updated_at": now,
                "driver": None, "cache_key": None, "cached_from": None}  # fmt: skip
    rows = [{**template, **record} for record in records(count, uuid.uuid4().hex)]
    names = list(outcome(0)) + ["updated_at"]
    update = runs.update().where(runs.c.uid == sa.bindparam("b_uid")).values({n: sa.bindparam(f"b_{n}") for n in names})
    outcomes = [{"b_uid": row["uid"], **{f"b_{k}": v for k, v in {**outcome(i), "updated_at": now}.items()}}
                for i, row in enumerate(rows)]  # fmt: skip
    seconds, _ = timed(lambda: _floor_writes(store.engine, runs, rows, update, outcomes))
    return seconds


def _floor_writes(engine, runs, rows, update, outcomes) -> None:
    with engine.begin() as connection:
        connection.execute(runs.insert(), rows)
    with engine.begin() as connection:
        connection.execute(update, outcomes)


def store_once(store, count: int) -> float:
    """Seconds for ``create_runs`` of ``count`` records and their outcomes through a Recorder."""
    from shoal.recorder import Recorder

    recorder = Recorder(store)
    batch = records(count, uuid.uuid4().hex)
    outcomes = [outcome(i) for i in range(count)]

    def write() -> None:
        store.create_runs(batch)
        recorder.expect(count)
        for record, fields in zip(batch, outcomes):
            recorder.finished(record["uid"], fields, [], _ignore)
        recorder.flush()

    seconds, _ = timed(write)
    assert store.count_runs(state="completed", parent=batch[0]["parent"]) == count
    recorder.close()
    return seconds


def _ignore(problem: Exception | None) -> None:
    if problem is not None:
        raise problem


def in_process(kind: str, url: str, project: str, count: int, barrier, out) -> None:
    """One of K concurrent drivers: set up, wait at the barrier, write, report its seconds."""
    store = open_store(url, project)  # before the clock starts
    barrier.wait()
    out.put((floor_once if kind == "floor" else store_once)(store, count))
    store.close()


def table_state(url: str) -> dict[str, Any]:
    """How worn the ``runs`` table is before measuring: dead row versions left by earlier outcome
    UPDATEs slow every later one down until a VACUUM removes them (PostgreSQL only; autovacuum may
    be off on a test server). Figures from a table with millions of dead rows are not comparable."""
    from sqlalchemy import text

    store = open_store(url, "table-state")
    try:
        with store.engine.connect() as connection:
            autovacuum = connection.execute(text("SHOW autovacuum")).scalar()
            live, dead = connection.execute(
                text("SELECT n_live_tup, n_dead_tup FROM pg_stat_user_tables WHERE relname = 'runs'")
            ).one()
    finally:
        store.close()
    print(f"runs table: {live:,} live and {dead:,} dead row versions; autovacuum {autovacuum}", flush=True)
    return {"autovacuum": autovacuum, "runs_live": live, "runs_dead": dead}


def map_once(url: str, count: int, backend) -> tuple[float, int]:
    import shoal

    with tempfile.TemporaryDirectory() as folder:
        project = shoal.Project(folder, name=f"p{uuid.uuid4().hex[:10]}", database=url)
        fn = shoal.function(noop)
        fn.map(list(range(50)), backend=backend, project=project)  # warm: workers up, function shipped
        seconds, runs = timed(lambda: fn.map(list(range(count)), backend=backend, project=project))
        assert all(run.state == "completed" for run in runs)
        recorded = project.store.count_runs(state="completed", parent=runs[0].parent)
        project.close()
    return seconds, recorded


def measure(database: str, url: str, args, backend) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    n = args.runs
    # Floor and store alternate within each repeat (the best of each is kept), so a busy moment of
    # the machine weighs on both alike.
    best = {"floor": float("inf"), "store": float("inf")}
    for _ in range(args.repeats):
        for mode in best:
            once = floor_once if mode == "floor" else store_once
            store = open_store(url, f"p{uuid.uuid4().hex[:10]}")
            best[mode] = min(best[mode], once(store, n))
            store.close()
    for mode, seconds in best.items():
        rows.append(
            {"database": database, "mode": mode, "drivers": 1, "runs": n, "seconds": seconds, "runs_per_s": n / seconds}
        )
        print(f"{database} {mode} 1 driver: {n} runs in {seconds:.2f} s = {n / seconds:,.0f} runs/s", flush=True)
    if args.drivers > 1:
        best = {"floor": float("inf"), "store": float("inf")}
        for _ in range(args.repeats):
            for mode in best:
                project = f"p{uuid.uuid4().hex[:10]}"
                seconds, _ = processes_behind_barrier(in_process, [(mode, url, project, n)] * args.drivers)
                best[mode] = min(best[mode], seconds)
        for mode in best:
            total = n * args.drivers
            seconds = best[mode]
            rows.append({"database": database, "mode": mode, "drivers": args.drivers, "runs": total, "seconds": seconds,
                         "runs_per_s": total / seconds})  # fmt: skip
            print(
                f"{database} {mode} {args.drivers} drivers: {total} runs in {seconds:.2f} s = {total / seconds:,.0f} runs/s",
                flush=True,
            )
    if backend is not None:
        seconds = float("inf")
        for _ in range(args.repeats):
            one, recorded = map_once(url, n, backend)
            assert recorded == n, f"{recorded} of {n} runs recorded completed"
            seconds = min(seconds, one)
        rows.append(
            {
                "database": database,
                "mode": "map",
                "drivers": 1,
                "runs": n,
                "seconds": seconds,
                "runs_per_s": n / seconds,
            }
        )
        print(
            f"{database} fn.map on Dask (2 workers), 1 driver: {n} runs in {seconds:.2f} s = {n / seconds:,.0f} recorded runs/s",
            flush=True,
        )
    for drivers in sorted({1, args.drivers}):
        got = {r["mode"]: r["runs_per_s"] for r in rows if r["drivers"] == drivers}
        print(ratio_line(f"{database} {drivers} driver(s): floor rate / store rate", got["floor"], got["store"],
                         target="<= 2 (within 2x of the floor)", unit="runs/s"), flush=True)  # fmt: skip
    return rows


def plot(report: dict, path) -> None:
    plt = pyplot()
    databases = list(dict.fromkeys(r["database"] for r in report["rows"]))
    figure, axes = plt.subplots(1, len(databases), figsize=(5 * len(databases), 4), squeeze=False)
    colors = {"floor": "#999999", "store": "#1f77b4", "map": "#ff7f0e"}
    for axis, database in zip(axes[0], databases):
        rows = [r for r in report["rows"] if r["database"] == database]
        bars(axis, [f"{r['mode']}\n{r['drivers']} drv" for r in rows], [r["runs_per_s"] for r in rows],
             [colors[r["mode"]] for r in rows], fmt="{:,.0f}")  # fmt: skip
        axis.axhline(10_000, color="red", linestyle="--", linewidth=1)
        axis.set_title(f"{database}: recorded runs/s (red: 10,000 target)", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


@contextlib.contextmanager
def postgres_database(given: str | None) -> Iterator[str]:
    """``given``, or a scratch database created on the local server for this run and dropped after
    (a fresh ``runs`` table: no dead rows left by earlier runs)."""
    if given:
        yield given
        return
    import sqlalchemy as sa

    name = f"shoal_store_rate_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(f"{SERVER}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{SERVER}/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def main() -> None:
    def add(parser) -> None:
        parser.add_argument("--runs", type=int, default=20_000, help="runs per driver")
        parser.add_argument("--drivers", type=int, default=4, help="concurrent driver processes (1: skip)")
        parser.add_argument("--databases", default="sqlite,postgresql")
        parser.add_argument(
            "--postgres", default=None, help="PostgreSQL URL (default: a scratch database on 127.0.0.1)"
        )
        parser.add_argument("--no-map", action="store_true", help="skip fn.map on Dask (the store alone)")

    args = options(__doc__, {"runs": 1000, "drivers": 2}, add, repeats=1)
    session = Session("store_rate", args)
    rows: list[dict[str, Any]] = []
    tables: dict[str, Any] = {}
    backend = None
    if not args.no_map:
        import shoal.backends

        backend = shoal.backends.get("dask", n_workers=2)
        backend.start()
    try:
        with tempfile.TemporaryDirectory() as folder:
            for database in args.databases.split(","):
                if database == "sqlite":
                    rows.extend(
                        measure(database, f"sqlite:///{folder}/{database}-{uuid.uuid4().hex[:6]}.db", args, backend)
                    )
                    continue
                with postgres_database(args.postgres) as url:
                    tables[database] = table_state(url)
                    rows.extend(measure(database, url, args, backend))
    finally:
        if backend is not None:
            backend.close()
    session.write({"rows": rows, "tables": tables}, plot)


if __name__ == "__main__":
    sys.exit(main())
