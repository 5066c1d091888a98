"""Insert-or-update in one statement, so concurrent writers never race between SELECT and INSERT.

``INSERT ... ON CONFLICT DO UPDATE`` is spelled the same on SQLite (3.24+) and PostgreSQL, but
SQLAlchemy builds it from each dialect's own ``insert``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection


def dialect_insert(connection: Connection) -> Callable[[sa.Table], Any]:
    """The connection's dialect's own ``insert``, whose ``on_conflict_*`` methods are spelled the same
    on both dialects (typed Any: SQLAlchemy types the two as unrelated classes)."""
    if connection.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as postgresql_insert

        return postgresql_insert
    if connection.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert
    # open_engine only admits the two
    raise NotImplementedError(f"upsert is not implemented for {connection.dialect.name}")  # pragma: no cover


def upsert(
    connection: Connection,
    table: sa.Table,
    rows: Sequence[dict[str, Any]],
    keys: Sequence[str],
    update: Sequence[str],
) -> None:
    """Insert ``rows``; where ``keys`` collide with an existing row, overwrite its ``update`` columns."""
    if not rows:
        return
    statement = dialect_insert(connection)(table)
    statement = statement.on_conflict_do_update(
        index_elements=[table.c[key] for key in keys],
        set_={column: statement.excluded[column] for column in update},
    )
    connection.execute(statement, list(rows))
