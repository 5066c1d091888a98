"""The :class:`Store`: one object per (database, project) that the rest of shoal talks to.

It owns the engine and the transactions; the SQL lives in :mod:`.functions`, :mod:`.runs` and
:mod:`.scaling`. Every method is one transaction, so a crash never leaves half a save or half a
finished run, and the engine's connection pool makes one ``Store`` safe to share between threads.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import exc
from sqlalchemy.engine import Connection, Engine

from ..errors import ShoalError, SpecError, StoreError
from . import functions as fn_sql
from . import runs as run_sql
from . import scaling as scaling_sql
from .engine import SQLITE_BEGIN, first_line, is_memory, mask, open_engine
from .migrate import upgrade
from .records import FunctionRecord, RunRecord, ScalingEventRecord
from .refs import LATEST, check_hash, check_name, check_tag, parse_function_ref
from .schema import utcnow

FinishItem = tuple[str, dict[str, Any], Sequence[dict[str, Any]]]


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
        """
        rows = run_sql.new_run_rows(self.project, runs, utcnow())
        if rows:
            with self._transaction(write=True) as connection:
                run_sql.insert_runs(connection, rows)

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
        updates = [(uid, dict(fields)) for uid, fields, _ in items]
        artifact_rows = [
            row for uid, _, artifacts in items for row in run_sql.artifact_rows(self.project, uid, artifacts, now)
        ]
        with self._transaction(write=True) as connection:
            # Counting the updated rows spares a SELECT per batch; only a shortfall (or a driver
            # that cannot count) looks for the missing uids, and raising rolls the batch back.
            updated = run_sql.update_runs(connection, self.project, updates, now)
            if updated != len({uid for uid, _ in updates}):
                run_sql.require_runs(connection, self.project, (uid for uid, _ in updates))
            run_sql.upsert_artifacts(connection, artifact_rows)

    def get_run(self, uid: str) -> RunRecord:
        """The run with this uid or unique uid prefix (at least 4 characters), with its artifacts."""
        with self._transaction(write=False) as connection:
            return run_sql.get(connection, self.project, uid)

    def list_runs(
        self,
        function: str | None = None,
        state: str | Sequence[str] | None = None,
        parent: str | None = None,
        limit: int | None = None,
    ) -> list[RunRecord]:
        """Runs matching every given filter, newest first (ties ordered by uid), with artifacts."""
        with self._transaction(write=False) as connection:
            return run_sql.query(connection, self.project, function, state, parent, limit)

    def count_runs(
        self,
        function: str | None = None,
        state: str | Sequence[str] | None = None,
        parent: str | None = None,
    ) -> int:
        """How many runs :meth:`list_runs` would return without a limit."""
        with self._transaction(write=False) as connection:
            return run_sql.count(connection, self.project, function, state, parent)


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
