"""Who drives a run, and whether that process is still there.

Every process that records runs registers once per project as a *driver* (host, PID, the process's
start time, a heartbeat) and stamps its runs with its id. A run left pending or running by a driver
that is gone (killed with SIGKILL, crashed, its machine lost) would otherwise look open forever; the
store ends such runs as failed, ``DriverLost``, when a project is opened or its runs are listed.

A driver is lost when it ran on this machine (same host name and PID namespace, so PIDs compare) and
no process with its PID and start time exists any more (a zombie counts as gone), which is known at
once; or when it ran elsewhere and its heartbeat is older than ``STALE_AFTER`` (the store's heartbeat
thread refreshes it every ``HEARTBEAT_INTERVAL`` while the driver has open runs). This process is
never lost. The queries here run on an open connection; the :class:`~shoal.store.Store` owns
transactions.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .schema import drivers, runs, utcnow
from .upsert import dialect_insert

HEARTBEAT_INTERVAL = 10.0  # seconds between heartbeats of a driver with open runs
STALE_AFTER = 300.0  # a driver on another machine is lost after this long without a heartbeat
PRUNE_AFTER = 3600.0  # driver rows without open runs and this stale are deleted at open
START_TOLERANCE = 1.0  # seconds: two readings of one process's start time agree within this
OPEN_STATES = ("pending", "running")
LOST = "DriverLost"
CHUNK = 500


@dataclass(frozen=True)
class Identity:
    """This process as a driver."""

    id: str
    host: str
    machine: str
    pid: int
    process_start: float | None


@dataclass(frozen=True)
class DriverRow:
    """A registered driver as the database holds it."""

    id: str
    host: str
    machine: str
    pid: int
    process_start: float | None
    heartbeat_at: datetime

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}"


def _process_start(pid: int) -> float | None:
    try:
        import psutil
    except ImportError:  # without psutil a PID that exists counts as alive (never a false "lost")
        return None
    try:
        return psutil.Process(pid).create_time()
    except (psutil.Error, OSError):
        return None


def _machine(host: str) -> str:
    """The host name and the PID namespace: PIDs of two processes compare only within one."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return f"{host}/{namespace}"[:255] if namespace else host[:255]


_current: Identity | None = None


def current() -> Identity:
    """This process's identity (made once; a forked child gets its own)."""
    global _current
    if _current is None:
        host = socket.gethostname()
        pid = os.getpid()
        _current = Identity(uuid.uuid4().hex, host[:255], _machine(host), pid, _process_start(pid))
    return _current


def _forget_identity() -> None:
    global _current
    _current = None


os.register_at_fork(after_in_child=_forget_identity)


def process_alive(pid: int, start: float | None) -> bool:
    """True if the process ``pid`` runs here and, when ``start`` is known, started then."""
    try:
        import psutil
    except ImportError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        return start is None or abs(process.create_time() - start) <= START_TOLERANCE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # it exists; whose it is cannot be read: alive
        return True


def lost_reason(row: DriverRow, me: Identity, now: datetime) -> str | None:
    """Why the driver of ``row`` is lost, or None while it may be alive."""
    if row.id == me.id:
        return None
    if row.machine == me.machine:
        if process_alive(row.pid, row.process_start):
            return None
        return f"the driver died ({row.describe()} is gone)"
    age = (now - row.heartbeat_at).total_seconds()
    if age <= STALE_AFTER:
        return None
    return f"the driver stopped sending heartbeats ({row.describe()}, last {age:.0f} s ago)"


def is_alive(row: DriverRow | None, me: Identity, now: datetime) -> bool:
    """A registered driver that is not lost (None: no known driver)."""
    return row is not None and lost_reason(row, me, now) is None


# -- queries ----------------------------------------------------------------------------------------
def _now_value(connection: Connection) -> Any:
    """The time heartbeats are written with: the server's clock on PostgreSQL (hosts may differ)."""
    return sa.func.now() if connection.dialect.name == "postgresql" else utcnow()


def db_now(connection: Connection) -> datetime:
    """The time heartbeats are compared with (the same clock :func:`_now_value` writes)."""
    if connection.dialect.name == "postgresql":
        return connection.execute(sa.select(sa.func.now())).scalar_one()
    return utcnow()


def register(connection: Connection, project: str, me: Identity) -> None:
    """Insert this driver, or refresh its heartbeat if it is there."""
    now = _now_value(connection)
    statement = dialect_insert(connection)(drivers).values(
        project=project,
        id=me.id,
        host=me.host,
        machine=me.machine,
        pid=me.pid,
        process_start=me.process_start,
        heartbeat_at=now,
        created_at=now,
    )
    connection.execute(
        statement.on_conflict_do_update(
            index_elements=[drivers.c.project, drivers.c.id],
            set_={"heartbeat_at": statement.excluded.heartbeat_at},
        )
    )


def beat(connection: Connection, project: str, me: Identity) -> bool:
    """Refresh this driver's heartbeat; True while it has open runs in ``project``."""
    updated = connection.execute(
        drivers.update()
        .where(drivers.c.project == project, drivers.c.id == me.id)
        .values(heartbeat_at=_now_value(connection))
    ).rowcount
    if not updated:  # pruned while it had nothing open
        register(connection, project, me)
    found = connection.execute(
        sa.select(runs.c.uid)
        .where(runs.c.driver == me.id, runs.c.state.in_(OPEN_STATES), runs.c.project == project)
        .limit(1)
    ).first()
    return found is not None


def cancelled_runs(connection: Connection, project: str, me: Identity) -> list[str]:
    """Runs of this driver that are recorded cancelled (by it, or by ``shoal runs cancel``)."""
    return list(
        connection.execute(
            sa.select(runs.c.uid).where(runs.c.driver == me.id, runs.c.state == "cancelled", runs.c.project == project)
        ).scalars()
    )


def _row(values: Any) -> DriverRow:
    return DriverRow(values.id, values.host, values.machine, values.pid, values.process_start, values.heartbeat_at)


def rows(connection: Connection, project: str, ids: Sequence[str]) -> dict[str, DriverRow]:
    """The registered drivers among ``ids``."""
    found: dict[str, DriverRow] = {}
    ordered = sorted(set(ids))
    for start in range(0, len(ordered), CHUNK):
        statement = sa.select(drivers).where(
            drivers.c.project == project, drivers.c.id.in_(ordered[start : start + CHUNK])
        )
        found.update((r.id, _row(r)) for r in connection.execute(statement))
    return found


def open_owners(connection: Connection, project: str) -> dict[str, DriverRow]:
    """The registered drivers that have pending or running runs in ``project``."""
    ids = connection.execute(
        sa.select(runs.c.driver)
        .where(runs.c.project == project, runs.c.state.in_(OPEN_STATES), runs.c.driver.is_not(None))
        .distinct()
    ).scalars()
    return rows(connection, project, list(ids))


def end_runs(connection: Connection, project: str, driver: str, reason: str) -> list[tuple[str, str]]:
    """End the open runs of a lost driver as failed, ``DriverLost``; returns (uid, state it had)."""
    from ..execution import error_dict

    ended: list[tuple[str, str]] = []
    now = utcnow()
    for state, outcome in (("pending", "before the run started"), ("running", "while the run was running")):
        where = (runs.c.project == project, runs.c.driver == driver, runs.c.state == state)
        uids = list(connection.execute(sa.select(runs.c.uid).where(*where)).scalars())
        if not uids:
            continue
        error = error_dict(LOST, f"driver lost: {reason} {outcome}")
        connection.execute(
            runs.update().where(*where).values(state="failed", error=error, ended_at=now, updated_at=now)
        )
        ended.extend((uid, state) for uid in uids)
    return ended


def _prunable(project: str, me: Identity, now: datetime) -> tuple[Any, ...]:
    open_run = sa.select(runs.c.uid).where(
        runs.c.project == drivers.c.project, runs.c.driver == drivers.c.id, runs.c.state.in_(OPEN_STATES)
    )
    return (
        drivers.c.project == project,
        drivers.c.id != me.id,
        drivers.c.heartbeat_at < now - timedelta(seconds=PRUNE_AFTER),
        ~open_run.exists(),
    )


def any_prunable(connection: Connection, project: str, me: Identity, now: datetime) -> bool:
    """True if :func:`prune` would delete something (read first: most opens find nothing)."""
    return connection.execute(sa.select(drivers.c.id).where(*_prunable(project, me, now)).limit(1)).first() is not None


def prune(connection: Connection, project: str, me: Identity, now: datetime) -> int:
    """Delete driver rows long without a heartbeat that own no open run (they only grow otherwise)."""
    return connection.execute(drivers.delete().where(*_prunable(project, me, now))).rowcount


def is_swept(record: Any) -> bool:
    """True for a run this module ended as ``DriverLost``: its real outcome is unknown (tuning's
    resume may still mend it from its study)."""
    error = getattr(record, "error", None) or {}
    return (
        getattr(record, "state", None) == "failed"
        and error.get("type") == LOST
        and str(error.get("message", "")).startswith("driver lost: ")
    )
