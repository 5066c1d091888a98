"""shoal.store.bulk writes exactly what SQLAlchemy's own executemany writes, on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from conftest import PG_ADMIN_URL, requires_postgres

from shoal.errors import NotFoundError, StoreError
from shoal.store import Store
from shoal.store import runs as run_sql
from shoal.store.bulk import execute_rows
from shoal.store.schema import runs


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=requires_postgres)])
def store(request, tmp_path):
    url = f"sqlite:///{tmp_path}/bulk.db" if request.param == "sqlite" else PG_ADMIN_URL
    opened = Store(url, project=f"t{uuid.uuid4().hex[:12]}")
    yield opened
    opened.close()


def _items(count: int) -> list[dict]:
    now = datetime.now(timezone.utc)
    elsewhere = timezone(timedelta(hours=5))
    values = [{}, {"x": 1.5, "nan": float("nan"), "list": [1, "a", None]}, {"nested": {"deep": [{}]}}]
    return [
        {
            "uid": uuid.uuid4().hex,
            "function": "f",
            "function_hash": "a" * 64,
            "params": values[i % 3],
            "labels": {"k": "v"} if i % 2 else {},
            "iteration": i,
            "cache_key": None if i % 2 else "c" * 64,
            # the same instant in another zone, and distinct instants: each must land as its own UTC time
            "created_at": now.astimezone(elsewhere) if i % 2 else now + timedelta(microseconds=i),
        }
        for i in range(count)
    ]


def _rows_of(store: Store, uids: list[str]) -> list[dict]:
    with store.engine.connect() as connection:
        found = connection.execute(sa.select(runs).where(runs.c.uid.in_(uids)).order_by(runs.c.uid)).mappings().all()
    return [{k: v for k, v in row.items() if k != "uid"} for row in found]


def test_inserts_and_updates_like_sqlalchemy(store: Store) -> None:
    now = datetime.now(timezone.utc)
    ours, theirs = _items(7), _items(7)
    for a, b in zip(ours, theirs):
        b["created_at"] = a["created_at"]
    ours_rows = run_sql.new_run_rows(store.project, ours, now, driver=None)
    theirs_rows = run_sql.new_run_rows(store.project, theirs, now, driver=None)
    with store.engine.begin() as connection:
        execute_rows(connection, run_sql.INSERT_RUN, ours_rows)
        connection.execute(runs.insert(), theirs_rows)
    ours_uids, theirs_uids = [r["uid"] for r in ours], [r["uid"] for r in theirs]
    # order by uid differs between the two sets: compare row by row through the iteration number
    by_iteration = lambda rows: sorted(rows, key=lambda r: r["iteration"])  # noqa: E731
    assert by_iteration(_rows_of(store, ours_uids)) == by_iteration(_rows_of(store, theirs_uids))
    assert by_iteration(_rows_of(store, ours_uids))[1]["created_at"] == ours[1]["created_at"]

    # Outcomes: an ended run, a JSON null error next to a SQL NULL one, and a start that must not reopen it.
    ended = {"state": "completed", "results": {"y": float("inf")}, "error": None, "ended_at": now}
    store.finish_runs([(uid, dict(ended), ()) for uid in ours_uids])
    store.finish_runs([(uid, {"state": "running", "started_at": now}, ()) for uid in ours_uids])
    records = {r.uid: r for r in store.get_runs(ours_uids)}
    assert all(r.state == "completed" and r.error is None and r.started_at is None for r in records.values())
    assert all(r.results == {"y": "Infinity"} and r.ended_at == now for r in records.values())


def test_missing_parameter_names_it(store: Store) -> None:
    rows = run_sql.new_run_rows(store.project, _items(2), datetime.now(timezone.utc), driver=None)
    del rows[1]["logs"]
    with pytest.raises(KeyError, match="logs"), store.engine.begin() as connection:
        execute_rows(connection, run_sql.INSERT_RUN, rows)


def test_insert_runs_writes_what_sqlalchemy_writes(store: Store) -> None:
    """insert_runs (COPY on PostgreSQL, executemany on SQLite) against SQLAlchemy's own INSERT."""
    now = datetime.now(timezone.utc)
    ours, theirs = _items(9), _items(9)
    for a, b in zip(ours, theirs):
        b["created_at"] = a["created_at"]
    with store.engine.begin() as connection:
        run_sql.insert_runs(connection, run_sql.new_run_rows(store.project, ours, now, driver=None))
        connection.execute(runs.insert(), run_sql.new_run_rows(store.project, theirs, now, driver=None))
    by_iteration = lambda rows: sorted(rows, key=lambda r: r["iteration"])  # noqa: E731
    mine = by_iteration(_rows_of(store, [r["uid"] for r in ours]))
    assert mine == by_iteration(_rows_of(store, [r["uid"] for r in theirs]))
    assert len(mine) == 9 and mine[1]["params"] == {"x": 1.5, "nan": "NaN", "list": [1, "a", None]}


def _outcome(i: int, now: datetime) -> dict:
    return {
        "state": "failed" if i % 3 == 0 else "completed",
        "results": {} if i % 2 else {"return": i, "inf": float("-inf")},
        "metrics": None,  # a JSON map given as None is stored as {}
        "error": {"type": "E", "message": "m"} if i % 3 == 0 else None,  # None: SQL NULL
        "logs": f"line {i}\n",
        "attempts": i,
        "started_at": now - timedelta(seconds=i),
        "ended_at": now,
    }


def test_update_runs_writes_what_sqlalchemy_writes(store: Store) -> None:
    """update_runs (one UPDATE ... FROM a COPY-filled staging table on PostgreSQL) against
    SQLAlchemy's own executemany UPDATE of the same outcomes, field groups mixed in one batch."""
    now = datetime.now(timezone.utc)
    ours, theirs = _items(12), _items(12)
    for a, b in zip(ours, theirs):
        b["created_at"] = a["created_at"]
    store.create_runs(ours + theirs)
    items = [
        (r["uid"], _outcome(i, now) if i % 4 else {"state": "running", "started_at": now}) for i, r in enumerate(ours)
    ]
    with store.engine.begin() as connection:
        assert run_sql.update_runs(connection, store.project, items, now) == len(items)
        for i, r in enumerate(theirs):
            fields = _outcome(i, now) if i % 4 else {"state": "running", "started_at": now}
            fields = {k: {} if v is None and k in run_sql.JSON_MAPS else v for k, v in fields.items()}
            connection.execute(runs.update().where(runs.c.uid == r["uid"]).values(**fields, updated_at=now))
    by_iteration = lambda rows: sorted(rows, key=lambda r: r["iteration"])  # noqa: E731
    mine = by_iteration(_rows_of(store, [r["uid"] for r in ours]))
    assert mine == by_iteration(_rows_of(store, [r["uid"] for r in theirs]))
    assert mine[0]["state"] == "running" and mine[3]["error"] == {"type": "E", "message": "m"}
    assert mine[1]["error"] is None and mine[1]["metrics"] == {} and mine[2]["results"]["inf"] == "-Infinity"


def test_a_uid_given_twice_is_updated_in_order(store: Store) -> None:
    """The same run twice in one batch: both updates apply, the later one last (a later round)."""
    now = datetime.now(timezone.utc)
    [item] = _items(1)
    store.create_runs([item])
    uid = item["uid"]
    store.finish_runs(
        [
            (uid, {"logs": "first", "attempts": 1}, ()),
            (uid, {"state": "completed", "ended_at": now}, ()),
            (uid, {"logs": "second"}, ()),
            (uid, {"state": "running", "started_at": now}, ()),  # a late start never reopens it
        ]
    )
    record = store.get_run(uid)
    assert (record.logs, record.attempts, record.state, record.started_at) == ("second", 1, "completed", None)


def test_a_duplicate_uid_is_refused_and_nothing_is_written(store: Store) -> None:
    items = _items(3)
    store.create_runs(items[:1])
    with pytest.raises(StoreError, match="conflicts with existing data"):
        store.create_runs(items[1:] + items[:1])
    assert [r.uid for r in store.get_runs([r["uid"] for r in items])] == [items[0]["uid"]]


def test_an_unknown_uid_fails_the_whole_batch(store: Store) -> None:
    items = _items(2)
    store.create_runs(items)
    now = datetime.now(timezone.utc)
    with pytest.raises(NotFoundError, match="no run with uid"):
        store.finish_runs(
            [(items[0]["uid"], {"state": "completed", "ended_at": now}, ()), ("f" * 32, {"logs": "x"}, ())]
        )
    assert store.get_run(items[0]["uid"]).state == "pending"  # rolled back with the batch


def test_many_updates_in_one_transaction_stay_apart(store: Store) -> None:
    """Several update batches before one commit (as claim_runs and finish_runs can): rows staged by
    an earlier batch are never applied again by a later one."""
    now = datetime.now(timezone.utc)
    items = _items(4)
    store.create_runs(items)
    a, b = items[0]["uid"], items[1]["uid"]
    with store.engine.begin() as connection:
        run_sql.update_runs(connection, store.project, [(a, {"logs": "a1"}), (b, {"logs": "b1"})], now)
        run_sql.update_runs(connection, store.project, [(a, {"logs": "a2"})], now)
        run_sql.update_runs(connection, store.project, [(b, {"attempts": 7})], now)
    got = {r.uid: (r.logs, r.attempts) for r in store.get_runs([a, b])}
    assert got == {a: ("a2", 0), b: ("b1", 7)}


@requires_postgres
def test_copy_never_wraps_an_integer_the_column_cannot_hold() -> None:
    """Binary COPY would store 2**40 in an int4 column as 0: such a batch goes as text, and the
    server refuses it as an INSERT would."""
    with Store(PG_ADMIN_URL, project=f"t{uuid.uuid4().hex[:12]}") as store:
        item = {**_items(1)[0], "iteration": 2**40}
        with pytest.raises(StoreError, match="out of range"):
            store.create_runs([item])
        assert store.count_runs() == 0
        fine = _items(3)
        store.create_runs(fine)
        assert sorted(r.iteration for r in store.list_runs()) == [0, 1, 2]


@requires_postgres
def test_copy_of_values_the_binary_format_does_not_take_still_lands() -> None:
    """A str subclass (an enum's value) is not a str to the binary dumper: the batch goes as text."""
    import enum

    class Backend(str, enum.Enum):
        DASK = "dask"

    with Store(PG_ADMIN_URL, project=f"t{uuid.uuid4().hex[:12]}") as store:
        items = [{**item, "backend": Backend.DASK} for item in _items(3)]
        store.create_runs(items)
        assert {r.backend for r in store.list_runs()} == {"dask"}


def test_sqlite_timestamp_text_is_sqlalchemys() -> None:
    """The one-step text of a timestamp on SQLite (``bulk._sqlite_timestamps``) is SQLAlchemy's."""
    from sqlalchemy.dialects import sqlite

    from shoal.store import bulk

    statement = runs.update().values(started_at=sa.bindparam("s", type_=runs.c.started_at.type))
    generic = statement.compile(dialect=sqlite.dialect())._bind_processors["s"]
    fast = bulk._sqlite_timestamps(generic)
    assert fast is not generic  # the samples matched: the fast path is in use
    elsewhere = timezone(timedelta(hours=-7, minutes=-30))
    for value in [
        datetime.now(timezone.utc),
        datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc),  # no microseconds: still six digits
        datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=elsewhere),
        datetime(2026, 6, 1, 12, 0, 0, 7),  # naive: local time
        datetime(99, 1, 1, tzinfo=timezone.utc),
        None,
    ]:
        assert fast(value) == generic(value)
    with pytest.raises(TypeError):
        fast("2026-01-01")
