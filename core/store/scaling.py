"""Scaling events of backends, as queries on an open connection.

Events arrive from the recorder in small batches, possibly more than once (every flush pulls the
backend's whole recent history); the unique key (project, backend, time, direction, reason) and an
insert that skips conflicts make recording idempotent without reading first.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..errors import StoreError
from .records import ScalingEventRecord
from .schema import SCALING_FIELDS, scaling_events
from .upsert import dialect_insert

DIRECTIONS = ("up", "down")
KEY = ("project", "backend", "time", "direction", "reason")


class ScalingEventLike(Protocol):
    """What :func:`event_rows` reads: ``shoal.backends.ScalingEvent`` or anything shaped like it."""

    # Read-only members: a protocol's plain attributes would also demand they accept None when set.
    @property
    def time(self) -> float: ...
    @property
    def direction(self) -> str: ...
    @property
    def workers_before(self) -> int | None: ...
    @property
    def workers_after(self) -> int | None: ...
    @property
    def reason(self) -> str: ...


def _count(value: Any) -> int | None:
    """A worker count; negative (the backends' "unknown") and None are stored as NULL."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise StoreError(f"a worker count must be a whole number or None, got {value!r}")
    return value if value >= 0 else None


def _row(project: str, backend: str, event: ScalingEventLike) -> dict[str, Any]:
    if event.direction not in DIRECTIONS:
        raise StoreError(f"scaling direction must be 'up' or 'down', got {event.direction!r}")
    if isinstance(event.time, bool) or not isinstance(event.time, (int, float)):
        raise StoreError(f"a scaling event's time must be seconds since the epoch, got {event.time!r}")
    try:
        when = datetime.fromtimestamp(event.time, timezone.utc)
    except (ValueError, OverflowError, OSError):
        raise StoreError(f"a scaling event's time must be seconds since the epoch, got {event.time!r}") from None
    return {
        "project": project,
        "backend": backend,
        "time": when,
        "direction": event.direction,
        "workers_before": _count(event.workers_before),
        "workers_after": _count(event.workers_after),
        "reason": str(event.reason or ""),
    }


def event_rows(project: str, backend: str, events: Sequence[ScalingEventLike]) -> list[dict[str, Any]]:
    """Insertable rows, without duplicates of the unique key."""
    if not isinstance(backend, str) or not backend or len(backend) > 255:
        raise StoreError(f"invalid backend label {backend!r}: expected 1-255 characters")
    rows: dict[tuple[Any, ...], dict[str, Any]] = {}
    for event in events:
        row = _row(project, backend, event)
        rows.setdefault(tuple(row[key] for key in KEY), row)
    return list(rows.values())


def insert_events(connection: Connection, rows: list[dict[str, Any]]) -> None:
    """Insert rows, skipping those already stored."""
    if not rows:
        return
    statement = dialect_insert(connection)(scaling_events).on_conflict_do_nothing(
        index_elements=[scaling_events.c[key] for key in KEY]
    )
    connection.execute(statement, rows)


def query(connection: Connection, project: str, backend: str | None, limit: int | None) -> list[ScalingEventRecord]:
    """Events newest first (equal times: the later recorded first)."""
    statement = (
        sa.select(*(scaling_events.c[field] for field in SCALING_FIELDS))
        .where(scaling_events.c.project == project)
        .order_by(scaling_events.c.time.desc(), scaling_events.c.id.desc())
    )
    if backend is not None:
        statement = statement.where(scaling_events.c.backend == backend)
    if limit is not None:
        statement = statement.limit(max(0, int(limit)))
    return [ScalingEventRecord(**row._asdict()) for row in connection.execute(statement)]
