"""The :class:`Store`: one object per (database, project) that the rest of shoal talks to.

It owns the engine and the transactions; the SQL lives in :mod:`.functions`, :mod:`.runs` and
:mod:`.scaling`. Every method is one transaction, so a crash never leaves half a save or half a
finished run, and the engine's connection pool makes one ``Store`` safe to share between threads.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypedDict

from sqlalchemy import exc
from sqlalchemy.engine import Connection, Engine

from ..errors import ShoalError, SpecError, StoreError
from . import drivers as driver_sql
from . import functions as fn_sql
from . import runs as run_sql
from . import scaling as scaling_sql
from .cache import StepCache, release_driver
from .engine import SQLITE_BEGIN, first_line, is_memory, mask, open_engine
from .heartbeat import Heartbeat
from .migrate import upgrade
from .records import ArtifactRecord, FunctionRecord, RunRecord, ScalingEventRecord
from .refs import LATEST, check_hash, check_name, check_tag, parse_function_ref
from .schema import utcnow

if TYPE_CHECKING:
    from typing_extensions import Unpack

FinishItem = tuple[str, dict[str, Any], Sequence[dict[str, Any]]]
log = logging.getLogger("shoal.store")


class RunFilter(TypedDict, total=False):
    """Which runs a query is about; every filter given must match (a sequence of states: any of them)."""

    function: str | None
    state: str | Sequence[str] | None
    parent: str | None


class Store:
    """Functions (every version by hash, movable tags), runs and artifact records of one project.

    ``url`` is a SQLAlchemy URL (``sqlite:///path/shoal.db``, ``postgresql+psycopg://...``); the
    schema is migrated to the current revision on open. Rows of other projects in the same database
    are invisible.
    """

    def __init__(self, url: str, project: str = "default") -> None:
        if not isinstance(project, str) or not project or len(project) > 128:
            raise StoreError(f"invalid project name {project!r}: expected 1-128 characters")
        self.project = project
        self._engine = open_engine(url)
        self.url = mask(self._engine.url)
        # In-memory SQLite is one shared connection: transactions from several threads must not interleave.
        self._serial: contextlib.AbstractContextManager[Any] = (
            threading.RLock() if is_memory(self._engine.url) else contextlib.nullcontext()
        )
        self._reader = self._engine.execution_options(**{SQLITE_BEGIN: "DEFERRED"})
        self._closed = False
        self._registered = float("-inf")  # when this process last wrote its driver row (monotonic)
        self.heartbeat = Heartbeat(self._beat)
        self.cache = StepCache(self)  # step-cache lookups and claims (``shoal.store.cache``)
        try:
            upgrade(self._engine)
        except BaseException:
            self._engine.dispose()
            raise

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine (for diagnostics; go through the methods for data)."""
        return self._engine

    def close(self) -> None:
        """Release every pooled connection; the store cannot be used afterwards."""
        if not self._closed:
            self.heartbeat.stop()
            self._closed = True
            self._engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({self.url!r}, project={self.project!r})"

    @contextlib.contextmanager
    def _transaction(self, write: bool) -> Iterator[Connection]:
        if self._closed:
            raise StoreError(f"the store {self.url} is closed; open a new Store")
        engine = self._engine if write else self._reader
        try:
            with self._serial, engine.begin() as connection:
                yield connection
        except ShoalError:
            raise
        except exc.IntegrityError as error:
            raise StoreError(f"write to {self.url} conflicts with existing data: {first_line(error)}") from error
        except exc.SQLAlchemyError as error:
            action = "write to" if write else "read from"
            raise StoreError(f"cannot {action} the database {self.url}: {first_line(error)}") from error

    # -- functions -------------------------------------------------------------------------------

    def save_function(
        self,
        name: str,
        hash: str,
        spec: dict[str, Any],
        *,
        description: str | None = None,
        labels: dict[str, Any] | None = None,
        tag: str | None = None,
    ) -> FunctionRecord:
        """Store a version (idempotent by (name, hash)) and move ``latest``, and ``tag`` if given, to it.

        Saving an existing version again refreshes its spec, description and labels (they are not
        part of the hash) but keeps its original ``created_at``.
        """
        check_name(name)
        check_hash(hash)
        tags = [LATEST] if tag is None else [LATEST, check_tag(tag)]
        if not isinstance(spec, dict):
            raise SpecError(f"function spec must be a dict, not {type(spec).__name__}")
        with self._transaction(write=True) as connection:
            fn_sql.save_version(
                connection, self.project, name, hash, spec, description, dict(labels or {}), tags, utcnow()
            )
            return fn_sql.resolve(connection, self.project, parse_function_ref(f"{name}@{hash}"))

    def get_function(self, ref: str) -> FunctionRecord:
        """The version named by ``name`` (its ``latest``), ``name:tag`` or ``name@hash-prefix``."""
        parsed = parse_function_ref(ref)
        with self._transaction(write=False) as connection:
            return fn_sql.resolve(connection, self.project, parsed)

    def list_functions(self) -> list[FunctionRecord]:
        """The ``latest`` version of every function, sorted by name."""
        with self._transaction(write=False) as connection:
            return fn_sql.latest_versions(connection, self.project)

    def function_history(self, name: str) -> list[FunctionRecord]:
        """Every version of ``name`` with its tags, newest first."""
        check_name(name)
        with self._transaction(write=False) as connection:
            return fn_sql.history(connection, self.project, name)

    # -- runs ------------------------------------------------------------------------------------

    def create_runs(self, runs: Sequence[dict[str, Any]]) -> None:
        """Insert new runs in one transaction; omitted fields get defaults ({} maps, "" logs, 0, now).

        Required keys: ``uid``, ``function``, ``function_hash``; ``state`` defaults to ``pending``.
        The runs are driven by this process (its driver row is written in the same transaction when
        due) unless a run gives ``"driver": None`` (nobody drives it yet, e.g. a Kubernetes Job's).
        """
        me = driver_sql.current()
        rows = run_sql.new_run_rows(self.project, runs, utcnow(), driver=me.id)
        if not rows:
            return
        owned = any(row["driver"] == me.id for row in rows)
        register = owned and time.monotonic() - self._registered > driver_sql.HEARTBEAT_INTERVAL
        with self._transaction(write=True) as connection:
            if register:
                driver_sql.register(connection, self.project, me)
            run_sql.insert_runs(connection, rows)
        if register:
            self._registered = time.monotonic()
        if owned:
            self.heartbeat.kick()

    def update_run(self, uid: str, **fields: Any) -> None:
        """Set some fields of one run (``updated_at`` is set to now unless given)."""
        self.finish_runs([(uid, fields, ())])

    def finish_run(self, uid: str, fields: dict[str, Any], artifacts: Sequence[dict[str, Any]] = ()) -> None:
        """Update a run and record its artifacts in one transaction.

        An artifact whose key the run already has (from an earlier attempt) replaces the old record.
        """
        self.finish_runs([(uid, fields, artifacts)])

    def finish_runs(self, items: Sequence[FinishItem]) -> None:
        """:meth:`finish_run` for many runs in one transaction (how batched bookkeeping lands)."""
        if not items:
            return
        now = utcnow()
        updates = [(uid, fields) for uid, fields, _ in items]  # only read
        artifact_rows = [
            row
            for uid, _, artifacts in items
            if artifacts
            for row in run_sql.artifact_rows(self.project, uid, artifacts, now)
        ]
        with self._transaction(write=True) as connection:
            # Counting the updated rows spares a SELECT per batch; only a shortfall (or a driver
            # that cannot count) looks for the missing uids, and raising rolls the batch back.
            updated = run_sql.update_runs(connection, self.project, updates, now)
            if updated != len({uid for uid, _ in updates}):
                run_sql.require_runs(connection, self.project, (uid for uid, _ in updates))
            run_sql.upsert_artifacts(connection, artifact_rows)
            # A run's cache claim ends with its recorded outcome, in the same transaction.
            self.cache.release_finished(connection, updates)

    def get_run(self, uid: str) -> RunRecord:
        """The run with this uid or unique uid prefix (at least 4 characters), with its artifacts."""
        with self._transaction(write=False) as connection:
            return run_sql.get(connection, self.project, uid)

    def list_runs(
        self, *, limit: int | None = None, created_before: datetime | None = None, **where: Unpack[RunFilter]
    ) -> list[RunRecord]:
        """Runs matching every given filter, newest first (ties ordered by uid), with artifacts."""
        with self._transaction(write=False) as connection:
            return run_sql.query(connection, self.project, limit=limit, created_before=created_before, **where)

    def count_runs(self, **where: Unpack[RunFilter]) -> int:
        """How many runs :meth:`list_runs` would return without a limit."""
        with self._transaction(write=False) as connection:
            return run_sql.count(connection, self.project, **where)

    def get_runs(self, uids: Sequence[str]) -> list[RunRecord]:
        """The runs with these exact uids, with artifacts (unknown uids are left out)."""
        with self._transaction(write=False) as connection:
            return run_sql.get_many(connection, self.project, uids)

    def descendants(self, uids: Iterable[str]) -> list[str]:
        """Uids of the children of ``uids``, recursively (a map's runs, a search's trials)."""
        with self._transaction(write=False) as connection:
            return run_sql.descendants(connection, self.project, uids)

    def cancel_runs(self, uids: Sequence[str], why: str) -> list[str]:
        """Record the open runs among ``uids`` as cancelled, saying ``why``; returns those uids.

        Their driver, if alive, learns it at its next heartbeat and stops them."""
        with self._transaction(write=True) as connection:
            return run_sql.cancel(connection, self.project, uids, why, utcnow())

    def delete_runs(
        self, uids: Sequence[str], keep_open_of: Iterable[str] = ()
    ) -> tuple[list[str], list[ArtifactRecord]]:
        """Delete runs with their artifact records in one transaction, except open runs driven by
        ``keep_open_of``; returns the deleted uids and their artifact records (the files are the
        caller's to remove)."""
        with self._transaction(write=True) as connection:
            return run_sql.delete(connection, self.project, uids, keep_open_of)

    # -- drivers (see shoal.store.drivers) ---------------------------------------------------------

    def claim_runs(self, uids: Sequence[str]) -> None:
        """Make this process the driver of ``uids`` (a worker taking over a run recorded for it)."""
        me = driver_sql.current()
        with self._transaction(write=True) as connection:
            driver_sql.register(connection, self.project, me)
            updated = run_sql.update_runs(
                connection, self.project, [(uid, {"driver": me.id}) for uid in uids], utcnow()
            )
            if updated != len(set(uids)):
                run_sql.require_runs(connection, self.project, uids)
        self._registered = time.monotonic()
        self.heartbeat.kick()

    def drivers(self, ids: Iterable[str]) -> tuple[dict[str, driver_sql.DriverRow], datetime]:
        """The registered drivers among ``ids``, and the time their heartbeats compare with."""
        with self._transaction(write=False) as connection:
            return driver_sql.rows(connection, self.project, list(ids)), driver_sql.db_now(connection)

    def live_drivers(self, ids: Iterable[str]) -> dict[str, driver_sql.DriverRow]:
        """Those of ``ids`` that are registered drivers and not lost (this process included)."""
        found, now = self.drivers(ids)
        me = driver_sql.current()
        return {key: row for key, row in found.items() if driver_sql.is_alive(row, me, now)}

    def end_lost_runs(self, prune: bool = False) -> list[tuple[str, str]]:
        """End the pending and running runs of lost drivers as failed (``DriverLost``); returns
        (uid, state it had). ``prune`` also deletes long-stale driver rows that own no open run."""
        me = driver_sql.current()
        with self._transaction(write=False) as connection:
            owners = driver_sql.open_owners(connection, self.project)
            now = driver_sql.db_now(connection)
            prune = prune and driver_sql.any_prunable(connection, self.project, me, now)
        lost = {key: why for key, row in owners.items() if (why := driver_sql.lost_reason(row, me, now))}
        ended: list[tuple[str, str]] = []
        if lost:
            with self._transaction(write=True) as connection:
                for key, why in lost.items():
                    ended.extend(driver_sql.end_runs(connection, self.project, key, why))
                    release_driver(connection, self.project, key)
        if ended:
            log.warning(
                "ended %d run(s) of project %s as failed (DriverLost): %s",
                len(ended),
                self.project,
                "; ".join(lost.values()),
            )
        if prune:
            with self._transaction(write=True) as connection:
                driver_sql.prune(connection, self.project, me, now)
        return ended

    def _beat(self) -> tuple[bool, list[str]]:
        """One heartbeat: (this process still has open runs, its runs recorded cancelled)."""
        me = driver_sql.current()
        with self._transaction(write=True) as connection:
            has_open = driver_sql.beat(connection, self.project, me)
        self._registered = time.monotonic()
        cancelled: list[str] = []
        if self.heartbeat.on_cancelled is not None:  # even with nothing open: it may have just been cancelled
            with self._transaction(write=False) as connection:
                cancelled = driver_sql.cancelled_runs(connection, self.project, me)
        return has_open, cancelled

    # -- scaling events --------------------------------------------------------------------------

    def record_scaling_events(self, backend: str, events: Sequence[scaling_sql.ScalingEventLike]) -> None:
        """Store scaling events of ``backend`` (a name or an engine address) in one transaction.

        Idempotent: an event already stored (same backend, time, direction and reason) is skipped,
        so callers may hand over a backend's whole recent history every time. Worker counts that
        are negative or None mean "unknown" and are stored as NULL.
        """
        rows = scaling_sql.event_rows(self.project, backend, events)
        if rows:
            with self._transaction(write=True) as connection:
                scaling_sql.insert_events(connection, rows)

    def list_scaling_events(self, backend: str | None = None, limit: int | None = 50) -> list[ScalingEventRecord]:
        """Recorded scaling events, newest first, of one backend label or of all (``None``)."""
        with self._transaction(write=False) as connection:
            return scaling_sql.query(connection, self.project, backend, limit)
