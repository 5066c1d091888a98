"""Writing a search's run records from the driver: finishing, failing and mending them.

A record the driver cannot write (the store unreachable for a moment, the run gone) is logged and
left: the search itself goes on.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from shoal.execution import error_dict
from shoal.store.drivers import is_swept

if TYPE_CHECKING:  # pragma: no cover
    from shoal.project import Project

log = logging.getLogger("shoal.tuning")


def now() -> datetime:
    return datetime.now(timezone.utc)


def utc(moment: datetime | None) -> datetime | None:
    """An Optuna timestamp (naive, local time) as the records keep them (UTC)."""
    return moment.astimezone(timezone.utc) if moment is not None else None


def recordable(value: Any) -> Any:
    """``value`` as a run record stores it (JSON-safe)."""
    from shoal.runner import recordable as to_record

    return to_record(value)


def failed(kind: str, message: str) -> dict[str, Any]:
    """The fields of a run record that failed for ``kind`` (no traceback: nothing raised here)."""
    return {"state": "failed", "error": error_dict(kind, message)}


def finish_record(project: Project, uid: str, fields: dict[str, Any]) -> None:
    """End run ``uid`` with ``fields`` (``ended_at`` now unless given)."""
    try:
        project.store.finish_run(uid, {"ended_at": now(), **fields})
    except Exception as exc:  # noqa: BLE001 - a record we cannot mend must not stop the search
        log.warning("could not mend run %s: %s", uid[:12], exc)


def fail_record(project: Project, uid: str | None, kind: str, message: str) -> None:
    """Fail run ``uid`` if it is still open (or was ended by the store's sweep of lost drivers)."""
    if not uid:
        return
    try:
        record = project.store.get_run(uid)
        if record.state not in ("pending", "running") and not is_swept(record):
            return
    except Exception as exc:  # noqa: BLE001 - a record we cannot read must not stop the search
        log.warning("could not mark run %s failed: %s", uid[:12], exc)
        return
    finish_record(project, uid, failed(kind, message))
