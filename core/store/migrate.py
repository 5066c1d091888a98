"""Bring a database to the schema this code expects, safely when many processes open it at once.

Opening a store is frequent and usually finds the schema current, so the fast path only reads the
recorded revision and never imports alembic. Otherwise one process at a time migrates: a
``filelock`` lock file next to a SQLite database (an OS lock, so a holder that crashed leaves
nothing held), ``pg_advisory_lock`` on PostgreSQL; the winner re-checks under the lock (another
process may have just finished) and runs alembic. A process that has to wait says so in the log.
"""

from __future__ import annotations

import contextlib
import logging
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.engine import Connection, Engine

from ..errors import StoreError
from .engine import SQLITE_BEGIN, first_line, mask, sqlite_path

HEAD = "0008_cache_key_index"
"""The newest revision in ``migrations/versions`` (a test keeps the two in step)."""

VERSION_TABLE = "shoal_alembic_version"
"""Not alembic's default name, so an application's own alembic history can share the database."""

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
LOCK_TIMEOUT_S = 300.0
_PG_LOCK_KEY = zlib.crc32(b"shoal.store.migrate")

log = logging.getLogger("shoal.store")


def current_revision(connection: Connection) -> str | None:
    """The revision recorded in the database, or None if it was never migrated."""
    if not sa.inspect(connection).has_table(VERSION_TABLE):
        return None
    return connection.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate forward to ``revision`` (default: the head), doing nothing if already there."""
    if revision in ("head", HEAD):
        try:
            with engine.execution_options(**{SQLITE_BEGIN: "DEFERRED"}).connect() as connection:
                if current_revision(connection) == HEAD:
                    return
        except exc.SQLAlchemyError as error:
            raise StoreError(f"cannot read the schema revision of {mask(engine.url)}: {first_line(error)}") from error
    _run(engine, "upgrade", revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Migrate back to ``revision`` (``"base"`` drops every shoal table)."""
    _run(engine, "downgrade", revision)


def _run(engine: Engine, command_name: str, revision: str) -> None:
    from alembic import command
    from alembic.config import Config
    from alembic.util import CommandError

    with _locked_connection(engine) as connection, connection.begin():
        if command_name == "upgrade" and revision in ("head", HEAD) and current_revision(connection) == HEAD:
            return  # another process migrated while we waited for the lock
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
        config.attributes["connection"] = connection
        try:
            getattr(command, command_name)(config, revision)
        except CommandError as error:
            raise StoreError(
                f"cannot migrate the database at {mask(engine.url)} to {revision} ({error}); if it was "
                "created by a newer shoal, upgrade shoal"
            ) from error
        except exc.SQLAlchemyError as error:
            raise StoreError(f"migrating the database at {mask(engine.url)} failed: {first_line(error)}") from error


@contextlib.contextmanager
def _locked_connection(engine: Engine) -> Iterator[Connection]:
    """A connection held under the cross-process migration lock."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as connection:
            _pg_lock(connection, engine)
            try:
                yield connection
            finally:
                try:
                    if connection.in_transaction():
                        connection.rollback()
                    connection.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": _PG_LOCK_KEY})
                    connection.commit()
                except exc.SQLAlchemyError:
                    connection.invalidate()  # closing the session releases the lock
        return
    path = sqlite_path(engine.url)
    with _file_lock(None if path is None else Path(f"{path}.migrate.lock"), engine), engine.connect() as connection:
        yield connection


def _pg_lock(connection: Connection, engine: Engine) -> None:
    deadline = time.monotonic() + LOCK_TIMEOUT_S
    waiting = False
    while True:
        got = connection.execute(sa.text("SELECT pg_try_advisory_lock(:key)"), {"key": _PG_LOCK_KEY}).scalar()
        connection.commit()  # the advisory lock is session-level; end the read transaction
        if got:
            return
        if not waiting:
            _say_waiting(engine, "the advisory lock")
            waiting = True
        if time.monotonic() > deadline:
            raise StoreError(
                f"timed out after {LOCK_TIMEOUT_S:.0f} s waiting for another process to migrate "
                f"{mask(engine.url)}; check for a stuck shoal process"
            )
        time.sleep(0.05)


@contextlib.contextmanager
def _file_lock(path: Path | None, engine: Engine) -> Iterator[None]:
    """The migration lock of a SQLite database: a new lock object (and descriptor) per call, so
    threads of one process exclude each other as processes do."""
    if path is None:  # an in-memory database: no other process can open it
        yield
        return
    from filelock import FileLock, Timeout  # only when migrating: opening a current store skips it

    lock = FileLock(path, timeout=LOCK_TIMEOUT_S)
    try:
        lock.acquire(blocking=False)
    except Timeout:
        _say_waiting(engine, f"the lock file {path}")
        try:
            lock.acquire()
        except Timeout:
            raise StoreError(
                f"timed out after {LOCK_TIMEOUT_S:.0f} s waiting for the migration lock {path} "
                f"of {mask(engine.url)}; check for a stuck shoal process"
            ) from None
    try:
        yield
    finally:
        lock.release()


def _say_waiting(engine: Engine, lock: str) -> None:
    """Why opening a store pauses: another process holds the migration lock."""
    log.info("waiting for another process to migrate %s (it holds %s)", mask(engine.url), lock)
