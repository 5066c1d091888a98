"""The store's side of step caching: finding a reusable run by cache key, and the claims that let
only one driver run a key at a time.

A claim is a row of ``cache_claims`` keyed by (project, key): inserting it with ``ON CONFLICT DO
NOTHING`` and reading it back tells, in one transaction on SQLite and PostgreSQL alike, whether this
driver now holds the key or who does. The holder's claim is deleted in the transaction that records
its run's outcome (``StepCache.release_finished``, called by ``Store.finish_runs``), so a waiter that
finds the claim gone finds the outcome too. Claims of a driver that died are taken over by the next
driver that wants the key, and removed when the store ends that driver's runs (``DriverLost``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from . import drivers as driver_sql
from . import runs as run_sql
from .records import RunRecord
from .schema import cache_claims, runs, utcnow
from .upsert import dialect_insert

if TYPE_CHECKING:  # pragma: no cover
    from .store import Store

CANDIDATES = 5  # newest completed runs of a key looked at for one whose artifacts are all still there


@dataclass(frozen=True)
class ClaimAttempt:
    """What one try to claim a key found: ``held`` (this driver holds it for ``uid``), the completed
    runs of the key that may be reused (newest first), and otherwise the live holder's run uid."""

    held: bool
    candidates: tuple[RunRecord, ...]
    holder: str | None = None


class StepCache:
    """The step-cache queries of one :class:`~shoal.store.Store` (``store.cache``), each one transaction."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._held: dict[str, str] = {}  # run uid -> key, claims this process holds

    @property
    def project(self) -> str:
        return self._store.project

    def attempt(self, wanted: Sequence[tuple[str, str, datetime | None]]) -> list[ClaimAttempt]:
        """For each (key, run uid, not_before): claim the key for the run unless another live driver
        holds it (a dead holder's claim, or one whose run has ended, is taken over), and read the
        completed runs of the key that ended at or after ``not_before`` (all when None). One
        transaction for the lot, so a pipeline's thousand cached steps cost a few statements."""
        me = driver_sql.current()
        keys = sorted({key for key, _, _ in wanted})
        with self._store._transaction(write=True) as connection:
            driver_sql.register(connection, self.project, me)
            first = {key: uid for key, uid, _ in reversed(wanted)}  # the first run named for each key
            _insert_claims(connection, self.project, first, me.id)
            holders = _claims(connection, self.project, keys)
            gone = _gone(connection, self.project, holders, first, me)
            if gone:
                for start in range(0, len(gone), run_sql.CHUNK):
                    connection.execute(
                        cache_claims.delete().where(
                            cache_claims.c.project == self.project,
                            sa.tuple_(cache_claims.c.key, cache_claims.c.run_uid).in_(
                                gone[start : start + run_sql.CHUNK]
                            ),
                        )
                    )
                _insert_claims(connection, self.project, {key: first[key] for key, _ in gone}, me.id)
                holders.update(_claims(connection, self.project, [key for key, _ in gone]))
            completed = _completed(connection, self.project, keys)
        attempts = []
        for key, uid, not_before in wanted:
            holder = holders[key][0]
            candidates = tuple(r for r in completed.get(key, ()) if _ended_since(r, not_before))
            attempts.append(ClaimAttempt(holder == uid, candidates, None if holder == uid else holder))
        with self._lock:
            self._held.update((a_uid, key) for (key, a_uid, _), a in zip(wanted, attempts) if a.held)
        return attempts

    def record_cached(self, items: Sequence[tuple[dict[str, Any], Sequence[dict[str, Any]]]], *, new: bool) -> None:
        """Write ``cached`` runs with the artifact records they reuse, in one transaction: new runs
        (``new``), or runs recorded pending while this driver waited for another's claim."""
        me = driver_sql.current()
        now = utcnow()
        rows = run_sql.new_run_rows(self.project, [run for run, _ in items], now, driver=me.id)
        artifact_rows = [
            row for run, found in items for row in run_sql.artifact_rows(self.project, run["uid"], found, now)
        ]
        with self._store._transaction(write=True) as connection:
            if new:
                driver_sql.register(connection, self.project, me)
                run_sql.insert_runs(connection, rows)
            else:
                fields = ("state", "results", "metrics", "cache_key", "cached_from", "started_at", "ended_at")
                run_sql.update_runs(
                    connection, self.project, [(r["uid"], {f: r[f] for f in fields}) for r in rows], now
                )
            run_sql.upsert_artifacts(connection, artifact_rows)

    def release(self, uids: Iterable[str]) -> None:
        """Give up this process's claims for runs ``uids`` (runs that were never launched)."""
        with self._lock:
            mine = [uid for uid in uids if uid in self._held]
        if mine:
            with self._store._transaction(write=True) as connection:
                self._delete(connection, mine)

    def release_finished(self, connection: Connection, updates: Sequence[tuple[str, dict[str, Any]]]) -> None:
        """Inside the transaction that writes ``updates`` (uid, fields): drop the claims this process
        holds for runs they end (no statement at all while it holds none: the common case)."""
        if not self._held:
            return
        with self._lock:
            mine = [
                uid
                for uid, fields in updates
                if uid in self._held and fields.get("state") not in (None, *driver_sql.OPEN_STATES)
            ]
        if mine:
            self._delete(connection, mine)

    def _delete(self, connection: Connection, mine: list[str]) -> None:
        for start in range(0, len(mine), run_sql.CHUNK):
            connection.execute(
                cache_claims.delete().where(
                    cache_claims.c.project == self.project,
                    cache_claims.c.run_uid.in_(mine[start : start + run_sql.CHUNK]),
                )
            )
        with self._lock:
            for uid in mine:
                self._held.pop(uid, None)


def _ended_since(record: RunRecord, moment: datetime | None) -> bool:
    return moment is None or (record.ended_at is not None and record.ended_at >= moment)


def release_driver(connection: Connection, project: str, driver: str) -> None:
    """Drop every claim of a lost driver (with its runs ended ``DriverLost``)."""
    connection.execute(cache_claims.delete().where(cache_claims.c.project == project, cache_claims.c.driver == driver))


def _insert_claims(connection: Connection, project: str, uids: dict[str, str], driver: str) -> None:
    """Insert a claim of each key (key -> run uid) where none exists."""
    if not uids:
        return
    now = utcnow()
    rows = [
        {"project": project, "key": key, "run_uid": uid, "driver": driver, "created_at": now}
        for key, uid in uids.items()
    ]
    statement = dialect_insert(connection)(cache_claims)
    connection.execute(
        statement.on_conflict_do_nothing(index_elements=[cache_claims.c.project, cache_claims.c.key]), rows
    )


def _claims(connection: Connection, project: str, keys: Sequence[str]) -> dict[str, tuple[str, str]]:
    """key -> (run uid, driver id) of the claims on ``keys``."""
    found: dict[str, tuple[str, str]] = {}
    for start in range(0, len(keys), run_sql.CHUNK):
        statement = sa.select(cache_claims.c.key, cache_claims.c.run_uid, cache_claims.c.driver).where(
            cache_claims.c.project == project, cache_claims.c.key.in_(keys[start : start + run_sql.CHUNK])
        )
        found.update((row.key, (row.run_uid, row.driver)) for row in connection.execute(statement))
    return found


def _gone(
    connection: Connection,
    project: str,
    holders: dict[str, tuple[str, str]],
    wanted: dict[str, str],
    me: driver_sql.Identity,
) -> list[tuple[str, str]]:
    """(key, run uid) of the claims held for other runs than ``wanted`` (key -> run uid) that no
    longer stand: the run has ended, or its driver is lost."""
    others = {key: held for key, held in holders.items() if held[0] != wanted[key]}
    if not others:
        return []
    uids = sorted({uid for uid, _ in others.values()})
    states: dict[str, str] = {}
    for start in range(0, len(uids), run_sql.CHUNK):
        statement = sa.select(runs.c.uid, runs.c.state).where(
            runs.c.project == project, runs.c.uid.in_(uids[start : start + run_sql.CHUNK])
        )
        states.update((row.uid, row.state) for row in connection.execute(statement))
    found = driver_sql.rows(connection, project, sorted({driver for _, driver in others.values()}))
    now = driver_sql.db_now(connection)
    return [
        (key, uid)
        for key, (uid, driver) in others.items()
        if states.get(uid, "pending") not in driver_sql.OPEN_STATES
        or not driver_sql.is_alive(found.get(driver), me, now)
    ]


def _completed(connection: Connection, project: str, keys: Sequence[str]) -> dict[str, list[RunRecord]]:
    """key -> the completed runs made under it, newest first (at most CANDIDATES each)."""
    chosen: dict[str, list[str]] = {}
    for start in range(0, len(keys), run_sql.CHUNK):
        statement = (
            sa.select(runs.c.uid, runs.c.cache_key)
            .where(
                runs.c.project == project,
                runs.c.cache_key.in_(keys[start : start + run_sql.CHUNK]),
                runs.c.state == "completed",
            )
            .order_by(runs.c.ended_at.desc(), runs.c.uid.desc())
        )
        for row in connection.execute(statement):
            newest = chosen.setdefault(row.cache_key, [])
            if len(newest) < CANDIDATES:
                newest.append(row.uid)
    records = {r.uid: r for r in run_sql.get_many(connection, project, [u for us in chosen.values() for u in us])}
    return {key: [records[uid] for uid in uids if uid in records] for key, uids in chosen.items()}
