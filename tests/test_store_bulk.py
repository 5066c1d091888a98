"""shoal.store.bulk writes exactly what SQLAlchemy's own executemany writes, on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from conftest import PG_ADMIN_URL, requires_postgres

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
