"""Open a SQLAlchemy engine for the store: tuned per database, checked before anything uses it.

SQLite is the embedded default and must stay safe under many concurrent writer processes: WAL lets
readers run beside one writer, ``busy_timeout`` makes a writer wait for the lock instead of failing,
and write transactions start with ``BEGIN IMMEDIATE`` so the lock is taken up front (a deferred
transaction that later upgrades to a write can fail with "database is locked" without waiting).
A URL that cannot be used fails here, at once, with one line naming the URL and the fix.
"""

from __future__ import annotations

import random
import re
import sqlite3
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event, exc
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.pool import StaticPool

from ..errors import StoreError
from . import codec

SQLITE_BUSY_TIMEOUT_S = 30.0
# WAL pages written before a commit checkpoints them into the database file (SQLite's default is
# 1,000, 4 MB): a map of 2,000 runs writes about that much, so every map paid a checkpoint inside a
# commit. At 4,000 (16 MB of WAL at most) recording 2,000 runs and their outcomes cost ~20% less here.
SQLITE_WAL_AUTOCHECKPOINT_PAGES = 4000
POSTGRES_CONNECT_TIMEOUT_S = 5
BEGIN_MODES = frozenset({"DEFERRED", "IMMEDIATE", "EXCLUSIVE"})
# Execution option naming how a SQLite transaction begins; reads pass "DEFERRED".
SQLITE_BEGIN = "shoal_sqlite_begin"
EXAMPLES = "use sqlite:///path/to/shoal.db or postgresql+psycopg://user:password@host:5432/dbname"


def mask(url: str | URL) -> str:
    """The URL with its password replaced by ``***``, safe for messages and logs."""
    if isinstance(url, URL):
        return url.render_as_string(hide_password=True)
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)


def is_memory(url: URL) -> bool:
    """True for SQLite URLs that name no file (each engine gets its own private database)."""
    return url.get_backend_name() == "sqlite" and (
        url.database in (None, "", ":memory:") or url.query.get("mode") == "memory"
    )


def sqlite_path(url: URL) -> Path | None:
    """The database file of a SQLite URL, or None for in-memory databases."""
    if is_memory(url):
        return None
    database = url.database or ""
    if database.startswith("file:"):  # URI filename (``?uri=true``)
        database = database[5:].split("?", 1)[0]
    return Path(database)


def open_engine(url: str | URL) -> Engine:
    """Create an engine for ``url`` and connect once, raising ``StoreError`` if that fails.

    Supported: ``sqlite:///file`` (parent folders are created), ``sqlite://`` (in memory) and
    ``postgresql+psycopg://`` (a bare ``postgresql://`` means psycopg 3, the driver shoal ships with).
    """
    parsed = _parse(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return _open_sqlite(parsed)
    if backend == "postgresql":
        return _open_postgresql(parsed)
    raise StoreError(f"unsupported database URL scheme {parsed.drivername!r} in {mask(parsed)}; {EXAMPLES}")


def _parse(url: str | URL) -> URL:
    try:
        parsed = make_url(url)
    except (exc.ArgumentError, ValueError, TypeError) as error:
        raise StoreError(f"invalid database URL {mask(str(url))!r} ({error}); {EXAMPLES}") from None
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def _create(url: URL, **kwargs: Any) -> Engine:
    try:
        return sa.create_engine(url, json_serializer=codec.dumps, json_deserializer=codec.loads, **kwargs)
    except exc.NoSuchModuleError:
        raise StoreError(f"unknown database driver {url.drivername!r} in {mask(url)}; {EXAMPLES}") from None
    except ImportError as error:
        raise StoreError(
            f"the driver for {mask(url)} is not installed ({error}); install it "
            "(for PostgreSQL: pip install 'shoal[postgres]') or " + EXAMPLES
        ) from None
    except (exc.ArgumentError, TypeError, ValueError) as error:
        raise StoreError(f"cannot use database URL {mask(url)} ({error}); {EXAMPLES}") from None


def first_line(error: BaseException) -> str:
    """The first line of the driver's message, for one-line errors."""
    orig = getattr(error, "orig", None) or error
    text = str(orig).strip()
    return text.splitlines()[0] if text else type(orig).__name__


def _make_parents(folder: Path) -> list[Path]:
    """Create ``folder`` and missing ancestors; return the ones created, outermost first."""
    missing = []
    for candidate in (folder, *folder.parents):
        if candidate.exists() or candidate.is_symlink():
            break
        missing.append(candidate)
    created = []
    for candidate in reversed(missing):
        try:
            candidate.mkdir()
        except FileExistsError:
            if not candidate.is_dir():
                raise
            continue  # another process opening the same store just made it; not ours to remove
        created.append(candidate)
    return created


def _remove_folders(folders: list[Path]) -> None:
    """Undo :func:`_make_parents` as far as the folders are still empty.

    The database file itself is never removed: another process may have created it meanwhile.
    """
    for folder in reversed(folders):
        try:
            folder.rmdir()
        except OSError:
            pass


def _open_sqlite(url: URL) -> Engine:
    path = sqlite_path(url)
    folders: list[Path] = []
    if path is not None:
        if str(path).startswith("~"):
            path = path.expanduser()
            url = url.set(database=str(path))
        try:
            folders = _make_parents(path.parent)
        except OSError as error:
            raise StoreError(
                f"cannot create folder {path.parent} for SQLite database {mask(url)} "
                f"({error.strerror or error}); choose a writable path"
            ) from None
    kwargs: dict[str, Any] = {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False}}
    if path is None:
        kwargs["poolclass"] = StaticPool  # one shared connection, or every thread sees a new database
    engine = _create(url, **kwargs)
    _install_sqlite_events(engine, wal=path is not None)
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")
    except exc.DBAPIError as error:
        engine.dispose()
        _remove_folders(folders)
        raise StoreError(
            f"cannot open SQLite database {mask(url)} ({first_line(error)}); "
            "check that the path is a writable file location"
        ) from error
    return engine


def _switch_to_wal(cursor: Any) -> None:
    """Put the database in WAL mode (a persistent setting; a no-op once done).

    Measured: when several processes switch a fresh file at once, a few get "database is locked"
    immediately, because SQLite skips the busy handler for this lock upgrade. So retry, briefly.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
    while True:
        try:
            if cursor.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                # Returns the resulting mode: not "wal" where the file system cannot do WAL, in
                # which case SQLite keeps its rollback journal (correct, only less concurrent).
                cursor.execute("PRAGMA journal_mode = WAL").fetchone()
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) and "busy" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(random.uniform(0.001, 0.02))


def _install_sqlite_events(engine: Engine, *, wal: bool) -> None:
    busy_ms = int(SQLITE_BUSY_TIMEOUT_S * 1000)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Hand transaction control to the "begin" hook below instead of the driver's implicit BEGIN.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {busy_ms}")
            if wal:
                _switch_to_wal(cursor)
                cursor.execute(f"PRAGMA wal_autocheckpoint = {SQLITE_WAL_AUTOCHECKPOINT_PAGES}")
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: sa.Connection) -> None:
        mode = str(connection.get_execution_options().get(SQLITE_BEGIN, "IMMEDIATE")).upper()
        if mode not in BEGIN_MODES:
            raise ValueError(f"{SQLITE_BEGIN} must be one of {sorted(BEGIN_MODES)}, not {mode!r}")
        connection.exec_driver_sql(f"BEGIN {mode}")


def _open_postgresql(url: URL) -> Engine:
    connect_args: dict[str, Any] = {}
    if "connect_timeout" not in url.query:
        connect_args["connect_timeout"] = POSTGRES_CONNECT_TIMEOUT_S
    if "application_name" not in url.query:
        connect_args["application_name"] = "shoal"
    engine = _create(url, connect_args=connect_args, pool_pre_ping=True)
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")
    except exc.DBAPIError as error:
        engine.dispose()
        raise StoreError(
            f"cannot connect to PostgreSQL at {mask(url)} ({first_line(error)}); check that the server "
            "is running and reachable and that the user, password and database in the URL exist"
        ) from error
    return engine
