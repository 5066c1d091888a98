"""Insert-or-update in one statement, so concurrent writers never race between SELECT and INSERT.

``INSERT ... ON CONFLICT DO UPDATE`` is spelled the same on SQLite (3.24+) and PostgreSQL, but
SQLAlchemy builds it from each dialect's own ``insert``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection


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
    if connection.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif connection.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:  # pragma: no cover - open_engine only admits the two
        raise NotImplementedError(f"upsert is not implemented for {connection.dialect.name}")
    statement = insert(table)
    statement = statement.on_conflict_do_update(
        index_elements=[table.c[key] for key in keys],
        set_={column: statement.excluded[column] for column in update},
    )
    connection.execute(statement, list(rows))
