"""The migration lock of a SQLite store, with real processes: a second process that opens a store
while another migrates it waits, then finds the schema migrated (and migrates nothing itself); a
process killed while holding the lock leaves nothing held. The holder process pauses under the lock
at a marker file (its lock is wrapped), so every step waits on an event.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import sqlalchemy as sa

from shoal.store import Store, migrate
from shoal.testing import wait_for

from helpers import kill_by_pid

#: Opens the store at URL, pausing once it holds the migration lock (before its migration's
#: transaction begins): touches HELD, then migrates when GO exists (never, when the test kills it).
HOLDER = """
import contextlib, pathlib, sys
from shoal.store import Store, migrate
from shoal.testing import wait_for

url, held, go = sys.argv[1:4]
take_lock = migrate._file_lock

@contextlib.contextmanager
def paused_lock(path, engine):
    with take_lock(path, engine):
        pathlib.Path(held).touch()
        wait_for(lambda: pathlib.Path(go).exists(), timeout=120, what="the go marker")
        yield

migrate._file_lock = paused_lock
Store(url).close()
"""

#: Opens the store at URL; touches WAITING when shoal says it waits for another process's
#: migration; prints the migration steps it ran itself and the revision it found, as JSON.
WAITER = """
import json, logging, pathlib, sys
from shoal.store import Store, migrate

url, waiting = sys.argv[1:3]
ran = []

class Watch(logging.Handler):
    def emit(self, record):
        message = record.getMessage()
        if "waiting for another process to migrate" in message:
            pathlib.Path(waiting).touch()
        if message.startswith("Running upgrade"):
            ran.append(message)

for name in ("shoal.store", "alembic.runtime.migration"):
    logging.getLogger(name).addHandler(Watch())
    logging.getLogger(name).setLevel(logging.INFO)
with Store(url) as store, store.engine.connect() as connection:
    print(json.dumps({"ran": ran, "revision": migrate.current_revision(connection)}))
"""


def _start(script: str, *args: object) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _revision(url: str) -> str | None:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return migrate.current_revision(connection)
    finally:
        engine.dispose()


@pytest.mark.timeout(180)
def test_a_second_process_waits_for_the_migration_then_finds_the_schema_migrated(tmp_path):
    url = f"sqlite:///{tmp_path}/shoal.db"
    held, go, waiting = tmp_path / "held", tmp_path / "go", tmp_path / "waiting"
    holder = _start(HOLDER, url, held, go)
    waiter = None
    try:
        wait_for(lambda: held.exists() or holder.poll() is not None, timeout=120, what="the holder's migration")
        assert holder.poll() is None, holder.communicate()[1]
        waiter = _start(WAITER, url, waiting)
        wait_for(lambda: waiting.exists() or waiter.poll() is not None, timeout=120, what="the waiter's wait")
        assert waiter.poll() is None, f"the waiter did not wait for the lock: {waiter.communicate()}"
        go.touch()
        holder_out, holder_err = holder.communicate(timeout=120)
        waiter_out, waiter_err = waiter.communicate(timeout=120)
    finally:
        kill_by_pid([p.pid for p in (holder, waiter) if p is not None])
    assert holder.returncode == 0, holder_err
    assert waiter.returncode == 0, waiter_err
    seen = json.loads(waiter_out)
    assert seen == {"ran": [], "revision": migrate.HEAD}  # it migrated nothing: the holder had done it all


@pytest.mark.timeout(180)
def test_a_process_killed_while_holding_the_lock_does_not_wedge_it(tmp_path):
    url = f"sqlite:///{tmp_path}/shoal.db"
    held = tmp_path / "held"
    holder = _start(HOLDER, url, held, tmp_path / "never")
    try:
        wait_for(lambda: held.exists() or holder.poll() is not None, timeout=120, what="the holder's migration")
        assert holder.poll() is None, holder.communicate()[1]
    finally:
        kill_by_pid([holder.pid])
    assert Path(f"{tmp_path}/shoal.db.migrate.lock").exists()  # the file stays; the OS lock went with the process
    assert _revision(url) is None  # the killed migration left nothing half-done
    with Store(url) as store:
        store.create_runs([{"uid": "after", "function": "f", "function_hash": "0" * 64}])
        assert store.get_run("after").state == "pending"
    assert _revision(url) == migrate.HEAD
