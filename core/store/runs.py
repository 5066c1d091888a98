"""Runs and their artifact records, as queries on an open connection.

Built for batches: callers hand over many runs or many finished runs at once and each becomes a
handful of statements however large the batch (on PostgreSQL a COPY, and one ``UPDATE ... FROM`` a
staging table per set of fields, see ``shoal.store.pg_copy``; on SQLite one executemany, which
measured as fast there as multi-row statements), which keeps bookkeeping off the hot path. The :class:`~shoal.store.Store` owns transactions; these functions only read and write rows.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..errors import AmbiguousError, NotFoundError, StoreError
from . import pg_copy
from .bulk import execute_columns, execute_rows
from .drivers import OPEN_STATES
from .records import ArtifactRecord, RunRecord
from .refs import check_prefix
from .schema import ARTIFACT_FIELDS, RUN_FIELDS, artifacts, runs
from .upsert import upsert

REQUIRED_RUN_FIELDS = ("uid", "function", "function_hash")
JSON_MAPS = ("params", "inputs", "results", "metrics", "labels")
KNOWN_RUN_FIELDS = frozenset(RUN_FIELDS)
NULLABLE_RUN_FIELDS = frozenset(c.name for c in runs.columns if c.nullable)
UPDATABLE_RUN_FIELDS = frozenset(RUN_FIELDS) - {"uid", "created_at"}
BIND_NAMES = {field: f"v_{field}" for field in UPDATABLE_RUN_FIELDS}  # parameters of _update_statement
REQUIRED_ARTIFACT_FIELDS = ("key", "url", "kind")
CHUNK = 500  # bound on IN (...) lists, well under SQLite's and PostgreSQL's parameter limits
LIST_HINT = "run `shoal runs list` to see recent runs"
INSERT_RUN = runs.insert()  # one object, so its compiled form is reused (``shoal.store.bulk``)
RUN_COLUMNS = tuple(c.name for c in runs.columns)


def _unknown(fields: Iterable[str], known: Iterable[str], what: str) -> None:
    unknown = sorted(set(fields) - set(known))
    if unknown:
        raise StoreError(f"unknown {what} field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")


def _check_uid(uid: Any) -> str:
    if not isinstance(uid, str) or not uid or len(uid) > 32:
        raise StoreError(f"invalid run uid {uid!r}: expected a string of 1-32 characters")
    return uid


def new_run_rows(
    project: str, items: Sequence[dict[str, Any]], now: datetime, driver: str | None = None
) -> list[dict[str, Any]]:
    """Complete run dicts with defaults ({} maps, "" logs, 0 attempts, now, ``driver``) into
    insertable rows (an explicit ``"driver": None`` records a run nobody drives yet).

    The defaults are one template per call, copied per row (the empty maps are shared: rows are
    only written, never changed), so a map of thousands of runs pays a dict copy per run."""
    template: dict[str, Any] = {
        "project": project,
        "parent": None,
        "iteration": None,
        "state": "pending",
        "error": None,
        "logs": "",
        "attempts": 0,
        "backend": "",
        "created_at": now,
        "started_at": None,
        "ended_at": None,
        "updated_at": now,
        "driver": driver,
        "cache_key": None,
        "cached_from": None,
        **{field: {} for field in JSON_MAPS},
    }
    rows = []
    for item in items:
        if not KNOWN_RUN_FIELDS.issuperset(item):
            _unknown(item, RUN_FIELDS, "run")
        missing = [field for field in REQUIRED_RUN_FIELDS if item.get(field) in (None, "")]
        if missing:
            raise StoreError(f"run {item.get('uid')!r} lacks required field(s) {', '.join(missing)}")
        _check_uid(item["uid"])
        row = template.copy()
        if None in item.values():  # None means "use the default" except where None is a real value
            row.update({key: value for key, value in item.items() if value is not None or key in NULLABLE_RUN_FIELDS})
        else:  # the common case (a map's children): no filtering pass per row
            row.update(item)
        rows.append(row)
    return rows


def insert_runs(connection: Connection, rows: list[dict[str, Any]]) -> None:
    """Insert new runs (a uid that already exists is an IntegrityError, by design): one COPY on
    PostgreSQL, one executemany elsewhere."""
    if not rows:
        return
    if pg_copy.supported(connection):
        pg_copy.copy_rows(connection, runs, RUN_COLUMNS, rows)
    else:
        execute_rows(connection, INSERT_RUN, rows)


def require_runs(connection: Connection, project: str, uids: Iterable[str]) -> None:
    """Raise NotFoundError unless every uid is a run of ``project``."""
    wanted = set(uids)
    found: set[str] = set()
    ordered = sorted(wanted)
    for start in range(0, len(ordered), CHUNK):
        chunk = ordered[start : start + CHUNK]
        found.update(
            connection.execute(sa.select(runs.c.uid).where(runs.c.project == project, runs.c.uid.in_(chunk))).scalars()
        )
    missing = sorted(wanted - found)
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise NotFoundError(f"no run with uid {shown} in project {project!r}; {LIST_HINT}")


def update_runs(
    connection: Connection, project: str, items: Sequence[tuple[str, dict[str, Any]]], now: datetime
) -> int:
    """Apply each ``(uid, fields)``, in order: runs with the same set of fields share one statement
    (one ``UPDATE ... FROM`` a COPY-filled staging table on PostgreSQL, one executemany elsewhere).

    An update to an open state (pending, running: a start) never reopens a run that has ended, so a
    late start cannot undo a cancel. A uid given twice is updated twice, in order (the second time in
    a later round of statements). Returns how many rows were updated, or -1 where the driver
    cannot count an executemany."""
    rounds: list[dict[tuple[str, ...], list[tuple[str, dict[str, Any]]]]] = []
    seen: dict[str, int] = {}
    for uid, fields in items:
        _check_uid(uid)
        if not UPDATABLE_RUN_FIELDS.issuperset(fields):
            _unknown(fields, UPDATABLE_RUN_FIELDS, "run")
        turn = seen[uid] = seen.get(uid, -1) + 1
        if turn == len(rounds):
            rounds.append(defaultdict(list))
        rounds[turn][tuple(sorted({*fields, "updated_at"}))].append((uid, fields))
    copy = pg_copy.supported(connection)
    if copy and items:
        pg_copy.ensure_stage(connection)
    updated = 0
    countable = copy or connection.dialect.supports_sane_multi_rowcount
    for groups in rounds:
        for names, group in groups.items():
            if copy:
                uids = [uid for uid, _ in group]
                updated += pg_copy.update_runs_from_stage(connection, project, uids, _field_columns(names, group, now))
                continue
            columns = {BIND_NAMES[name]: values for name, values in _field_columns(names, group, now).items()}
            columns["_uid"] = [uid for uid, _ in group]
            columns["_project"] = [project] * len(group)
            result = execute_columns(connection, _update_statement(names), columns)
            updated += result.rowcount if countable or len(group) == 1 else 0
    return updated if countable else -1


def _value(name: str, value: Any) -> Any:
    """What an update stores for ``value`` of field ``name`` (None in a JSON map is the empty map)."""
    return {} if value is None and name in JSON_MAPS else value


def _field_columns(
    names: tuple[str, ...], group: Sequence[tuple[str, dict[str, Any]]], now: datetime
) -> dict[str, list[Any]]:
    """The values of each of ``names`` across ``group`` (runs that set exactly those fields), column
    by column as a COPY sends them (``updated_at`` now unless given)."""
    columns = {}
    for name in names:
        if name == "updated_at":
            columns[name] = [fields.get(name, now) for _, fields in group]
        elif name in JSON_MAPS:
            columns[name] = [_value(name, fields[name]) for _, fields in group]
        else:
            columns[name] = [fields[name] for _, fields in group]
    return columns


@functools.lru_cache(maxsize=256)
def _update_statement(names: tuple[str, ...]) -> sa.Update:
    """The UPDATE that sets ``names`` of one run, built once per set of fields: building the
    expression costs more than running it on the hot path (one per finished run)."""
    where = [runs.c.project == sa.bindparam("_project"), runs.c.uid == sa.bindparam("_uid")]
    if "state" in names:  # a start (an open state) never reopens an ended run
        new = sa.bindparam("v_state", type_=runs.c.state.type)
        still_open = sa.or_(*(runs.c.state == s for s in OPEN_STATES))
        where.append(sa.or_(still_open, sa.and_(*(new != s for s in OPEN_STATES))))
    return (
        runs.update()
        .where(*where)
        .values({name: sa.bindparam(BIND_NAMES[name], type_=runs.c[name].type) for name in names})
    )


def artifact_rows(project: str, uid: str, items: Sequence[dict[str, Any]], now: datetime) -> list[dict[str, Any]]:
    """Complete artifact dicts of run ``uid`` into insertable rows."""
    rows = []
    for item in items:
        _unknown(item, ARTIFACT_FIELDS, "artifact")
        missing = [field for field in REQUIRED_ARTIFACT_FIELDS if item.get(field) in (None, "")]
        if missing:
            raise StoreError(f"artifact {item.get('key')!r} of run {uid} lacks required field(s) {', '.join(missing)}")
        if item.get("run_uid", uid) != uid:
            raise StoreError(f"artifact {item['key']!r} names run {item['run_uid']!r} but is recorded for run {uid!r}")
        rows.append(
            {
                "project": project,
                "run_uid": uid,
                "format": None,
                "size": None,
                "sha256": None,
                "created_at": now,
                **item,
                "meta": item.get("meta") or {},
            }
        )
    return rows


def upsert_artifacts(connection: Connection, rows: list[dict[str, Any]]) -> None:
    """Insert artifact records, replacing any (run_uid, key) left by an earlier attempt."""
    unique = list({(row["run_uid"], row["key"]): row for row in rows}.values())  # last one wins
    upsert(
        connection,
        artifacts,
        unique,
        keys=("run_uid", "key"),
        update=[field for field in ARTIFACT_FIELDS if field not in ("run_uid", "key")] + ["project"],
    )


def get(connection: Connection, project: str, uid_or_prefix: str) -> RunRecord:
    """The run with this uid, else the one run whose uid starts with it."""
    row = connection.execute(sa.select(runs).where(runs.c.project == project, runs.c.uid == uid_or_prefix)).first()
    if row is None:
        prefix = check_prefix(uid_or_prefix, "run uid prefix", hex_only=False)
        rows = connection.execute(
            sa.select(runs)
            .where(runs.c.project == project, runs.c.uid.startswith(prefix, autoescape=True))
            .order_by(runs.c.uid)
            .limit(11)
        ).all()
        if not rows:
            raise NotFoundError(f"no run with uid or uid prefix {uid_or_prefix!r} in project {project!r}; {LIST_HINT}")
        if len(rows) > 1:
            shown = ", ".join(r.uid for r in rows[:10]) + (", ..." if len(rows) > 10 else "")
            raise AmbiguousError(
                f"run uid prefix {uid_or_prefix!r} matches several runs: {shown}; give more characters"
            )
        row = rows[0]
    return _records(connection, [row])[0]


def get_many(connection: Connection, project: str, uids: Sequence[str]) -> list[RunRecord]:
    """The runs with these exact uids (missing ones are left out), in no particular order."""
    found: list[RunRecord] = []
    ordered = sorted(set(uids))
    for start in range(0, len(ordered), CHUNK):
        statement = sa.select(runs).where(runs.c.project == project, runs.c.uid.in_(ordered[start : start + CHUNK]))
        found.extend(_records(connection, connection.execute(statement).all()))
    return found


def _filters(
    project: str,
    function: str | None,
    state: str | Sequence[str] | None,
    parent: str | None,
    created_before: datetime | None = None,
) -> list[Any]:
    where: list[Any] = [runs.c.project == project]
    if created_before is not None:
        where.append(runs.c.created_at < created_before)
    if function is not None:
        where.append(runs.c.function == function)
    if isinstance(state, str):
        where.append(runs.c.state == state)
    elif state is not None:
        where.append(runs.c.state.in_(list(state)))
    if parent is not None:
        where.append(runs.c.parent == parent)
    return where


def query(
    connection: Connection,
    project: str,
    function: str | None = None,
    state: str | Sequence[str] | None = None,
    parent: str | None = None,
    limit: int | None = None,
    created_before: datetime | None = None,
) -> list[RunRecord]:
    """Matching runs, newest first; equal creation times are ordered by uid (descending)."""
    statement = (
        sa.select(runs)
        .where(*_filters(project, function, state, parent, created_before))
        .order_by(runs.c.created_at.desc(), runs.c.uid.desc())
    )
    if limit is not None:
        statement = statement.limit(max(0, int(limit)))
    return _records(connection, connection.execute(statement).all())


def count(
    connection: Connection,
    project: str,
    function: str | None = None,
    state: str | Sequence[str] | None = None,
    parent: str | None = None,
) -> int:
    """How many runs match (same filters as :func:`query`)."""
    statement = sa.select(sa.func.count()).select_from(runs).where(*_filters(project, function, state, parent))
    return int(connection.execute(statement).scalar() or 0)


def _records(connection: Connection, rows: Sequence[Any]) -> list[RunRecord]:
    """Rows of ``runs`` as records with their artifacts (one extra query per 500 runs)."""
    by_run: dict[str, list[ArtifactRecord]] = defaultdict(list)
    uids = [row.uid for row in rows]
    for start in range(0, len(uids), CHUNK):
        statement = (
            sa.select(artifacts)
            .where(artifacts.c.run_uid.in_(uids[start : start + CHUNK]))
            .order_by(artifacts.c.run_uid, artifacts.c.created_at, artifacts.c.key)
        )
        for a in connection.execute(statement):
            by_run[a.run_uid].append(ArtifactRecord(**{field: getattr(a, field) for field in ARTIFACT_FIELDS}))
    return [
        RunRecord(
            **{field: getattr(row, field) for field in RUN_FIELDS},
            artifacts=tuple(by_run.get(row.uid, ())),
        )
        for row in rows
    ]


def descendants(connection: Connection, project: str, uids: Iterable[str]) -> list[str]:
    """The uids of the children of ``uids``, their children and so on (a map's runs, a search's trials)."""
    found: list[str] = []
    seen = set(uids)
    level = sorted(seen)
    while level:
        children: list[str] = []
        for start in range(0, len(level), CHUNK):
            statement = sa.select(runs.c.uid).where(
                runs.c.project == project, runs.c.parent.in_(level[start : start + CHUNK])
            )
            children.extend(uid for uid in connection.execute(statement).scalars() if uid not in seen)
        seen.update(children)
        found.extend(children)
        level = sorted(set(children))
    return found


def cancel(connection: Connection, project: str, uids: Sequence[str], why: str, now: datetime) -> list[str]:
    """Mark the open runs among ``uids`` cancelled (ended now, saying ``why``); returns their uids."""
    from ..execution import error_dict

    cancelled = []
    ordered = sorted(set(uids))
    for state, when in (("pending", "before it started"), ("running", "while it ran")):
        error = error_dict("CancelledError", f"cancelled {when}: {why}")
        for start in range(0, len(ordered), CHUNK):
            where = (runs.c.project == project, runs.c.uid.in_(ordered[start : start + CHUNK]), runs.c.state == state)
            chunk = list(connection.execute(sa.select(runs.c.uid).where(*where)).scalars())
            if chunk:
                connection.execute(
                    runs.update().where(*where).values(state="cancelled", error=error, ended_at=now, updated_at=now)
                )
                cancelled.extend(chunk)
    return cancelled


def delete(
    connection: Connection, project: str, uids: Sequence[str], keep_open_of: Iterable[str] = ()
) -> tuple[list[str], list[ArtifactRecord]]:
    """Delete runs and their artifact records, except open runs driven by ``keep_open_of`` (live
    drivers, checked again here in the deleting transaction). Returns the deleted uids and the
    artifact records they had, so their files can be removed."""
    keep = set(keep_open_of)
    deleted: list[str] = []
    removed: list[ArtifactRecord] = []
    ordered = sorted(set(uids))
    for start in range(0, len(ordered), CHUNK):
        chunk = ordered[start : start + CHUNK]
        rows = connection.execute(
            sa.select(runs.c.uid, runs.c.state, runs.c.driver).where(runs.c.project == project, runs.c.uid.in_(chunk))
        ).all()
        doomed = [r.uid for r in rows if not (r.state in OPEN_STATES and r.driver in keep)]
        if not doomed:
            continue
        statement = sa.select(artifacts).where(artifacts.c.project == project, artifacts.c.run_uid.in_(doomed))
        removed.extend(
            ArtifactRecord(**{f: getattr(a, f) for f in ARTIFACT_FIELDS}) for a in connection.execute(statement)
        )
        connection.execute(artifacts.delete().where(artifacts.c.project == project, artifacts.c.run_uid.in_(doomed)))
        connection.execute(runs.delete().where(runs.c.project == project, runs.c.uid.in_(doomed)))
        deleted.extend(doomed)
    return deleted, removed
