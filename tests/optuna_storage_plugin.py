"""A pytest plugin that points Optuna's own storage tests at the storages shoal uses.

Loaded (``-p optuna_storage_plugin``) by ``test_optuna_storage_suite.py`` into a pytest run of the
``tests/storages_tests/`` of Optuna's source distribution; nothing of Optuna's is copied here.

* Journal files: Optuna's lock classes (``JournalFileOpenLock``, ``JournalFileSymlinkLock``, and the
  default lock of ``JournalFileBackend``) become shoal's ``QueuedJournalLock``, so every journal-file
  test runs against shoal's lock.
* ``test_storages.py``: its storage modes become the storages shoal resolves from URLs, built by
  ``shoal.tuning.storage`` exactly as a search opens them (``heartbeat=True``): a journal file,
  SQLite, PostgreSQL and Redis, each empty for every test. Each is named by ``SHOAL_SUITE_STORAGES``
  (comma separated: journal, sqlite, postgresql, redis).

Creating Optuna's tables takes about a second per database, which would dominate the run: SQLite
tests get a copy of a database made once, PostgreSQL tests one schema of this run whose tables are
emptied before each test, Redis tests a fresh key prefix.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from typing import Any
from urllib.parse import quote

import optuna.storages.journal as journal
import optuna.storages.journal._file as journal_file
import optuna.testing.storages as testing_storages

from shoal.tuning.journal_lock import QueuedJournalLock  # binds Optuna's symlink lock before the swap
from shoal.tuning.storage import resolve

_made: dict[str, Any] = {}  # what this run made: its folder, SQLite template, PostgreSQL schema, locks
SHOAL_MODES = [f"shoal-{name}" for name in os.environ.get("SHOAL_SUITE_STORAGES", "journal,sqlite").split(",") if name]
POSTGRES_URL = os.environ.get("SHOAL_SUITE_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("SHOAL_SUITE_REDIS", "redis://127.0.0.1:6379")


def shoal_lock(filepath: str, grace_period: int | None = 30) -> QueuedJournalLock:
    """Stands in for Optuna's lock classes: the same arguments, shoal's lock (counted, so that the
    calling test can tell the swap took place)."""
    _made["locks"] = _made.get("locks", 0) + 1
    return QueuedJournalLock(filepath, grace_period)


journal.JournalFileOpenLock = shoal_lock
journal.JournalFileSymlinkLock = shoal_lock
journal_file.JournalFileSymlinkLock = shoal_lock  # what JournalFileBackend uses without lock_obj

testing_storages.STORAGE_MODES[:] = SHOAL_MODES  # read by test_storages.py's storage fixture
_enter, _exit = testing_storages.StorageSupplier.__enter__, testing_storages.StorageSupplier.__exit__


def _shoal_enter(self: Any) -> Any:
    kind = self.storage_specifier.removeprefix("shoal-")
    if kind == self.storage_specifier:
        return _enter(self)
    self._shoal_cleanup = []
    if kind == "journal":
        url = f"journal://{_folder()}/studies.journal"
    elif kind == "sqlite":
        url = f"sqlite:///{_folder()}/studies.db"
        shutil.copy(_sqlite_template(), url.removeprefix("sqlite:///"))
    elif kind == "postgresql":
        url = _postgres_emptied()
    elif kind == "redis":
        prefix = f"shoal-suite-{uuid.uuid4().hex[:12]}"
        self._shoal_cleanup.append(lambda: _redis_drop(prefix))
        url = f"{REDIS_URL}?prefix={prefix}"
    else:
        raise ValueError(f"unknown shoal storage {kind!r}")
    self.storage = resolve(url, None)._build(heartbeat=True)  # uncached: a fresh storage per test
    return self.storage


def _shoal_exit(self: Any, *exc_info: Any) -> None:
    try:
        _exit(self, *exc_info)  # disposes of an RDB engine
    finally:
        for cleanup in reversed(getattr(self, "_shoal_cleanup", [])):
            cleanup()


testing_storages.StorageSupplier.__enter__ = _shoal_enter
testing_storages.StorageSupplier.__exit__ = _shoal_exit




def _folder() -> str:
    """A new folder inside this run's folder (removed when the run ends)."""
    if "root" not in _made:
        _made["root"] = tempfile.mkdtemp(prefix="shoal-optuna-suite-")
    return tempfile.mkdtemp(dir=_made["root"])


def _sqlite_template() -> str:
    """A SQLite database with Optuna's tables, made once as shoal opens one."""
    if "sqlite" not in _made:
        path = f"{_folder()}/template.db"
        resolve(f"sqlite:///{path}", None)._build(heartbeat=True).engine.dispose()
        _made["sqlite"] = path
    return _made["sqlite"]


def _postgres_emptied() -> str:
    """The URL of this run's schema (made, with Optuna's tables, on first use), its study tables
    emptied."""
    import sqlalchemy

    if "schema" not in _made:
        schema = f"optuna_suite_{uuid.uuid4().hex[:12]}"
        url = f"{POSTGRES_URL}?options={quote(f'-csearch_path={schema}')}"
        _postgres(f'CREATE SCHEMA "{schema}"')
        _made["schema"] = schema
        resolve(url, None)._build(heartbeat=True).engine.dispose()
        engine = sqlalchemy.create_engine(POSTGRES_URL)
        try:
            tables = sqlalchemy.inspect(engine).get_table_names(schema=schema)
        finally:
            engine.dispose()
        _made["tables"] = [t for t in tables if t not in ("version_info", "alembic_version")]
        _made["postgres_url"] = url
    names = ", ".join(f'"{_made["schema"]}"."{t}"' for t in _made["tables"])
    _postgres(f"TRUNCATE {names} RESTART IDENTITY CASCADE")
    return _made["postgres_url"]


def _postgres(statement: str) -> None:
    import sqlalchemy

    engine = sqlalchemy.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text(statement))
    finally:
        engine.dispose()


def pytest_sessionfinish(session: Any, exitstatus: int) -> None:
    """Remove what this run made (its folder, its PostgreSQL schema); report how many of shoal's
    journal locks the tests made to ``SHOAL_SUITE_REPORT``."""
    report = os.environ.get("SHOAL_SUITE_REPORT")
    if report:
        with open(report, "w") as handle:
            json.dump({"shoal_locks": _made.get("locks", 0)}, handle)
    if "schema" in _made:
        _postgres(f'DROP SCHEMA "{_made["schema"]}" CASCADE')
    if "root" in _made:
        shutil.rmtree(_made["root"], ignore_errors=True)


def _redis_drop(prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()
