"""Executemany of one statement over many rows, with each row bound the cheapest way.

SQLAlchemy's executemany builds every row's parameters through the compiled statement's generic
``construct_params`` before running the per-type bind processors: measured here, about a quarter
of inserting or finishing 2,000 runs on SQLite (on PostgreSQL psycopg's own per-row work dominates
either way). The statements on the hot path (a map's run records,
its outcomes) are fixed, so each is compiled once per dialect and every row goes to the DB-API as a
tuple (or dict) run through the very bind processors SQLAlchemy would apply: the stored values are
the same, and errors are still wrapped as SQLAlchemy's (``exec_driver_sql``).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, CursorResult, Dialect
from sqlalchemy.sql.expression import ClauseElement

Processor = Callable[[Any], Any]
_MISSING = object()


@dataclass(frozen=True)
class _Bind:
    name: str  # the key in a row
    key: str  # the name the driver's SQL uses (differs where the dialect escapes it)
    process: Processor | None
    constant: Any  # a value fixed in the statement (a literal in a WHERE), already processed
    timestamp: bool  # a run's timestamps repeat across a batch ("now"): each is processed once


@dataclass(frozen=True)
class _Prepared:
    sql: str
    positional: bool
    binds: tuple[_Bind, ...]


@functools.lru_cache(maxsize=256)
def _prepare(statement: ClauseElement, dialect: Dialect, json_text: bool = False) -> _Prepared:
    """Compile ``statement`` once per dialect (statements are cached by identity: pass the same object).

    ``json_text``: JSON values become the text the dialect's JSON serializer makes of them, not the
    driver's JSON wrapper objects (which the driver would serialize with the same function): what a
    COPY sends, one Python call per value fewer."""
    compiled: Any = statement.compile(dialect=dialect)
    processors: dict[str, Processor] = dict(compiled._bind_processors)
    if json_text:
        for bind in compiled.binds.values():
            if isinstance(bind.type, sa.JSON):
                processors[compiled.bind_names[bind]] = _json_text(bind.type, dialect)
    escaped: dict[str, str] = compiled.escaped_bind_names or {}
    by_name = {compiled.bind_names[bind]: bind for bind in compiled.binds.values()}
    names = list(compiled.positiontup) if compiled.positional else list(by_name)
    binds = []
    for name in names:
        bind = by_name[name]
        process = processors.get(name)
        constant = _MISSING
        if not bind.required:
            constant = bind.effective_value if process is None else process(bind.effective_value)
        timestamp = isinstance(bind.type, sa.DateTime) or isinstance(getattr(bind.type, "impl", None), sa.DateTime)
        if timestamp and process is not None and dialect.name == "sqlite":
            process = _sqlite_timestamps(process)
        elif process is not None and isinstance(bind.type, sa.JSON):
            process = _empty_maps_once(process)
        binds.append(_Bind(name, escaped.get(name, name), process, constant, timestamp))
    return _Prepared(compiled.string, bool(compiled.positional), tuple(binds))


_PROBES = (
    datetime(2026, 12, 5, 16, 21, 5, 528839, tzinfo=timezone.utc),
    datetime(5, 1, 2, 3, 4, 5, tzinfo=timezone.utc),
    datetime(2026, 3, 4, 5, 6, 7, 8),
)


def _sqlite_timestamps(process: Processor) -> Processor:
    """A run's start and end are new timestamps each (no repeats to share): on SQLite their text is
    made in one step, in half the time of the generic chain (to UTC, drop the zone, format with a
    dict), falling back to ``process`` for anything but a datetime. Only if it matches ``process``
    on sample values (a dialect with another storage format keeps its own)."""

    def text(value: Any) -> Any:
        if type(value) is datetime:
            return value.astimezone(timezone.utc).isoformat(" ", "microseconds")[:26]
        return process(value)

    try:
        same = all(text(probe) == process(probe) for probe in _PROBES)
    except Exception:  # noqa: BLE001 - a processor that refuses the probes keeps its own way
        same = False
    return text if same else process


def _empty_maps_once(process: Processor) -> Processor:
    """Most JSON maps of a run are empty (inputs, metrics, labels, often results): their text is
    made once per statement, not by a call through the generic JSON processor per value."""
    empty = process({})

    def text(value: Any) -> Any:
        if value.__class__ is dict and not value:
            return empty
        return process(value)

    return text


def _json_text(json_type: sa.JSON, dialect: Dialect) -> Processor:
    """A JSON column's value as JSON text (SQL NULL for None where the column stores None so)."""
    serialize = getattr(dialect, "_json_serializer", None) or json.dumps
    if json_type.none_as_null:
        return lambda value: None if value is None else serialize(value)
    return serialize


def execute_rows(connection: Connection, statement: ClauseElement, rows: Sequence[dict[str, Any]]) -> CursorResult[Any]:
    """Run ``statement`` once per row in one executemany; a row must give every parameter the
    statement does not fix (a missing one is a KeyError naming it)."""
    if not rows:
        raise ValueError("execute_rows needs at least one row")
    prepared = _prepare(statement, connection.dialect)
    return _execute(connection, prepared, [_column(bind, rows) for bind in prepared.binds])  # one tight loop each


def execute_columns(
    connection: Connection, statement: ClauseElement, columns: dict[str, list[Any]]
) -> CursorResult[Any]:
    """:func:`execute_rows` of rows given column by column (``columns``: every parameter the
    statement does not fix, by name, to its values across the rows), for callers that never build
    a dict per row."""
    prepared = _prepare(statement, connection.dialect)
    count = len(next(iter(columns.values())))
    return _execute(connection, prepared, [_given(bind, columns, count) for bind in prepared.binds])


def _given(bind: _Bind, columns: dict[str, list[Any]], count: int) -> list[Any]:
    """The processed values of one parameter given column by column (or its fixed value)."""
    if bind.name in columns:
        return _processed(bind, columns[bind.name])
    if bind.constant is _MISSING:
        raise KeyError(f"a row lacks parameter {bind.name!r}")
    return [bind.constant] * count


def _execute(connection: Connection, prepared: _Prepared, columns: list[list[Any]]) -> CursorResult[Any]:
    """One executemany of the rows whose processed values ``columns`` holds, in the binds' order."""
    if prepared.positional:
        return connection.exec_driver_sql(prepared.sql, list(zip(*columns)))
    keys = [bind.key for bind in prepared.binds]
    return connection.exec_driver_sql(prepared.sql, [dict(zip(keys, values)) for values in zip(*columns)])


def processed_columns(
    connection: Connection, statement: ClauseElement, rows: Sequence[dict[str, Any]], json_text: bool = False
) -> dict[str, list[Any]]:
    """The values of every parameter of ``statement`` across ``rows``, as its bind processors make
    them (what a COPY of the same rows must send), by parameter name; ``json_text`` as in ``_prepare``."""
    prepared = _prepare(statement, connection.dialect, json_text)
    return {bind.name: _column(bind, rows) for bind in prepared.binds}


def processed_by_column(
    connection: Connection, statement: ClauseElement, columns: dict[str, list[Any]], json_text: bool = False
) -> dict[str, list[Any]]:
    """:func:`processed_columns` of rows given column by column (``columns``: every parameter of
    ``statement`` to its values across the rows), for callers that never build a dict per row."""
    prepared = _prepare(statement, connection.dialect, json_text)
    return {bind.name: _processed(bind, columns[bind.name]) for bind in prepared.binds}


def _column(bind: _Bind, rows: Sequence[dict[str, Any]]) -> list[Any]:
    """The processed values of one parameter across ``rows``."""
    if bind.constant is not _MISSING and bind.name not in rows[0]:
        return [bind.constant] * len(rows)
    try:
        values = [row[bind.name] for row in rows]
    except KeyError:
        raise KeyError(f"a row lacks parameter {bind.name!r}") from None
    return _processed(bind, values)


def _processed(bind: _Bind, values: list[Any]) -> list[Any]:
    """``values`` of one parameter through its bind processor."""
    process = bind.process
    if process is None:
        return values
    if bind.timestamp:
        done: dict[Any, Any] = {}
        return [done[v] if v in done else done.setdefault(v, process(v)) for v in values]
    return list(map(process, values))
