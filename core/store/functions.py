"""Function versions and their tags, as queries on an open connection.

A version is keyed by (project, name, hash) and never changes behaviour; tags such as ``latest``
are movable pointers to one version. The :class:`~shoal.store.Store` owns transactions; these
functions only read and write rows.
"""

from __future__ import annotations

import difflib
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..errors import AmbiguousError, NotFoundError
from .records import SHORT_HASH, FunctionRecord
from .refs import LATEST, FunctionRef
from .schema import function_tags, functions
from .upsert import upsert

LIST_HINT = "run `shoal functions list` to see the stored functions"


def save_version(
    connection: Connection,
    project: str,
    name: str,
    hash: str,
    spec: dict[str, Any],
    description: str | None,
    labels: dict[str, Any],
    tags: list[str],
    now: datetime,
) -> None:
    """Store the version (refreshing its description/labels/spec, keeping its first created_at)
    and point every tag in ``tags`` at it."""
    upsert(
        connection,
        functions,
        [
            dict(
                project=project,
                name=name,
                hash=hash,
                spec=spec,
                description=description,
                labels=labels,
                created_at=now,
            )
        ],
        keys=("project", "name", "hash"),
        update=("spec", "description", "labels"),
    )
    upsert(
        connection,
        function_tags,
        [dict(project=project, name=name, tag=tag, hash=hash, updated_at=now) for tag in dict.fromkeys(tags)],
        keys=("project", "name", "tag"),
        update=("hash", "updated_at"),
    )


def resolve(connection: Connection, project: str, ref: FunctionRef) -> FunctionRecord:
    """The version ``ref`` names, or NotFoundError/AmbiguousError saying what does exist."""
    if ref.tag is not None:
        hash = connection.execute(
            sa.select(function_tags.c.hash).where(
                function_tags.c.project == project,
                function_tags.c.name == ref.name,
                function_tags.c.tag == ref.tag,
            )
        ).scalar()
        if hash is None:
            _require_name(connection, project, ref.name)
            tags = _tag_names(connection, project, ref.name)
            raise NotFoundError(f"function {ref.name!r} has no tag {ref.tag!r}; its tags: {', '.join(tags) or 'none'}")
        where = functions.c.hash == hash
    else:
        assert ref.hash_prefix is not None
        where = functions.c.hash.startswith(ref.hash_prefix)
    rows = connection.execute(
        sa.select(functions)
        .where(functions.c.project == project, functions.c.name == ref.name, where)
        .order_by(functions.c.hash)
        .limit(11)
    ).all()
    if not rows:
        _require_name(connection, project, ref.name)
        if ref.tag:
            target = f"tag {ref.tag!r} points at a missing version"
        else:
            target = f"no version whose hash starts with {ref.hash_prefix!r}"
        raise NotFoundError(
            f"function {ref.name!r}: {target}; run `shoal functions history {ref.name}` to see its versions"
        )
    if len(rows) > 1:
        shown = ", ".join(row.hash[:SHORT_HASH] for row in rows[:10]) + (", ..." if len(rows) > 10 else "")
        raise AmbiguousError(
            f"hash prefix {ref.hash_prefix!r} matches several versions of {ref.name!r}: {shown}; give more characters"
        )
    return _records(connection, project, rows)[0]


def latest_versions(connection: Connection, project: str) -> list[FunctionRecord]:
    """The version tagged ``latest`` of every function, sorted by name."""
    rows = connection.execute(
        sa.select(functions)
        .join(
            function_tags,
            sa.and_(
                function_tags.c.project == functions.c.project,
                function_tags.c.name == functions.c.name,
                function_tags.c.hash == functions.c.hash,
            ),
        )
        .where(functions.c.project == project, function_tags.c.tag == LATEST)
        .order_by(functions.c.name)
    ).all()
    return _records(connection, project, rows)


def history(connection: Connection, project: str, name: str) -> list[FunctionRecord]:
    """Every version of ``name``, newest first (by when each version was first saved)."""
    rows = connection.execute(
        sa.select(functions)
        .where(functions.c.project == project, functions.c.name == name)
        .order_by(functions.c.created_at.desc(), functions.c.hash.desc())
    ).all()
    if not rows:
        _require_name(connection, project, name)
    return _records(connection, project, rows, name=name)


def _records(
    connection: Connection, project: str, rows: Sequence[Any], name: str | None = None
) -> list[FunctionRecord]:
    """Rows of ``functions`` as records, each with the tags pointing at it (one extra query)."""
    if not rows:
        return []
    query = sa.select(function_tags.c.name, function_tags.c.hash, function_tags.c.tag).where(
        function_tags.c.project == project
    )
    names = {row.name for row in rows}
    if name is not None or len(names) == 1:
        query = query.where(function_tags.c.name == (name or next(iter(names))))
    tags: dict[tuple[str, str], list[str]] = defaultdict(list)
    for tag_row in connection.execute(query.order_by(function_tags.c.tag)):
        tags[(tag_row.name, tag_row.hash)].append(tag_row.tag)
    return [
        FunctionRecord(
            name=row.name,
            hash=row.hash,
            spec=row.spec,
            description=row.description,
            labels=row.labels or {},
            created_at=row.created_at,
            tags=tuple(tags.get((row.name, row.hash), ())),
        )
        for row in rows
    ]


def _tag_names(connection: Connection, project: str, name: str) -> list[str]:
    return list(
        connection.execute(
            sa.select(function_tags.c.tag)
            .where(function_tags.c.project == project, function_tags.c.name == name)
            .order_by(function_tags.c.tag)
        ).scalars()
    )


def _require_name(connection: Connection, project: str, name: str) -> None:
    """Raise NotFoundError (with close matches) unless some version of ``name`` exists."""
    exists = connection.execute(
        sa.select(functions.c.name).where(functions.c.project == project, functions.c.name == name).limit(1)
    ).first()
    if exists:
        return
    names = (
        connection.execute(sa.select(functions.c.name).where(functions.c.project == project).distinct()).scalars().all()
    )
    close = difflib.get_close_matches(name, names, n=3)
    hint = f"did you mean {', '.join(repr(n) for n in close)}? " if close else ""
    raise NotFoundError(f"no function named {name!r} in project {project!r}; {hint}{LIST_HINT}")
