"""Ending runs from outside the code that waits on them: ``project.runs.cancel`` and
``project.runs.delete`` (``shoal runs cancel | delete``).

A cancel reaches a run where it can: through this process's handle when this process drives it;
otherwise the record is marked cancelled at once, and the driver that runs it, if alive, learns it
at its next heartbeat and stops the run (as ``ray job stop`` asks the job's driver to stop). A run
that ends before its driver learns of the cancel keeps its outcome.

A delete removes records and the files of their artifacts. Children go with their parent (a map's
runs, a search's trials). Runs still open under a live driver are never deleted: they are listed as
skipped, to be cancelled first.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time
from typing import TYPE_CHECKING, Any

from .errors import ParamError
from .runs import STATES, live_handle
from .store.drivers import current

if TYPE_CHECKING:  # pragma: no cover
    from .project import Project
    from .store import RunRecord

log = logging.getLogger("shoal.runs")
OPEN = ("pending", "running")


def uid_list(uids: str | Sequence[str] | None) -> list[str]:
    """One uid or several, as a list without repeats (order kept)."""
    if uids is None:
        return []
    items = [uids] if isinstance(uids, str) else list(uids)
    for item in items:
        if not isinstance(item, str) or not item:
            raise ParamError(f"run uids must be non-empty strings, got {item!r}")
    return list(dict.fromkeys(items))


def parse_before(value: str | date | datetime) -> datetime:
    """A moment from a datetime, a date (its midnight) or ISO text such as ``2026-12-01`` or
    ``2026-12-01T08:30``; without a time zone it is local time."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ParamError(
                f"before {value!r} is not a date; write it as YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS][+HH:MM]"
            ) from None
    elif isinstance(value, date) and not isinstance(value, datetime):
        value = datetime.combine(value, time())
    if not isinstance(value, datetime):
        raise ParamError(f"before must be a date, a datetime or ISO text, got {type(value).__name__}")
    return value.astimezone()


def check_states(state: str | Sequence[str] | None) -> list[str]:
    """Run states as a list, each one of :data:`shoal.runs.STATES`."""
    names = [] if state is None else [state] if isinstance(state, str) else list(state)
    for name in names:
        if name not in STATES:
            raise ParamError(f"unknown run state {name!r}; use one of {', '.join(STATES)}")
    return names


def _who() -> str:
    me = current()
    return f"pid {me.pid} on {me.host}"


# -- cancel -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CancelOutcome:
    """What a cancel did to one run: ``cancelled`` (recorded now), ``stopping`` (this process's
    handle was asked to stop the run; its record follows) or ``ended`` (nothing left to cancel)."""

    uid: str
    state: str  # the state it had when asked
    outcome: str
    detail: str = ""


def cancel(project: Project, uids: str | Sequence[str]) -> list[CancelOutcome]:
    """Cancel the runs ``uids`` (uids or unique prefixes) and their open children."""
    store = project.store
    given = [store.get_run(uid) for uid in uid_list(uids)]  # NotFoundError names an unknown uid
    if not given:
        raise ParamError("name at least one run uid to cancel")
    chosen = {record.uid: record for record in given}
    for record in store.get_runs(store.descendants(list(chosen))):
        chosen.setdefault(record.uid, record)
    outcomes: dict[str, CancelOutcome] = {}
    by_record = []
    for record in chosen.values():
        handle = live_handle(record.uid) if record.state in OPEN else None
        if record.state not in OPEN:
            outcomes[record.uid] = CancelOutcome(record.uid, record.state, "ended", f"already {record.state}")
        elif handle is not None:
            handle.cancel()
            outcomes[record.uid] = CancelOutcome(record.uid, record.state, "stopping", "stopped through its handle")
        else:
            by_record.append(record)
    if by_record:
        marked = set(store.cancel_runs([r.uid for r in by_record], f"requested by {_who()}"))
        live = store.live_drivers({r.driver for r in by_record if r.driver})
        for record in by_record:
            if record.uid not in marked:
                outcomes[record.uid] = CancelOutcome(record.uid, record.state, "ended", "it ended before the cancel")
                continue
            owner = live.get(record.driver or "")
            if owner is not None and owner.id != current().id:
                detail = f"its driver ({owner.describe()}) stops it at its next heartbeat"
            else:
                detail = ""
            outcomes[record.uid] = CancelOutcome(record.uid, record.state, "cancelled", detail)
    return [outcomes[uid] for uid in chosen]


# -- delete -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DeletionResult:
    """What a delete did: the deleted uids, how many of their artifacts were removed from the
    artifact store, artifacts left in place (outside that store) and files that could not be removed."""

    deleted: list[str]
    artifacts_removed: int
    left_in_place: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


@dataclass
class DeletionPlan:
    """The runs a delete would remove (children included) and those it leaves because a live
    driver still runs them. Nothing changes until :meth:`execute`."""

    project: Project
    runs: list[RunRecord]
    skipped: list[tuple[RunRecord, str]]
    children: int = 0  # how many of ``runs`` are there because their parent is deleted

    @property
    def artifact_count(self) -> int:
        return sum(len(record.artifacts) for record in self.runs)

    def states(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for record in self.runs:
            counts[record.state] = counts.get(record.state, 0) + 1
        return counts

    def execute(self) -> DeletionResult:
        """Delete the records (one transaction), then the artifact files of the deleted runs."""
        store = self.project.store
        uids = [record.uid for record in self.runs]
        if not uids:
            return DeletionResult([], 0)
        drivers = {r.driver for r in self.runs if r.state in OPEN and r.driver}
        deleted, artifacts = store.delete_runs(uids, keep_open_of=store.live_drivers(drivers))
        reused = {r.uid for r in self.runs if r.cached_from}  # a cached run's files are its source run's
        artifacts = [a for a in artifacts if a.run_uid not in reused]
        removed, outside, problems = _remove_files(self.project, deleted, artifacts)
        return DeletionResult(deleted, removed, outside, problems)


def plan_delete(
    project: Project,
    uids: str | Sequence[str] | None = None,
    *,
    state: str | Sequence[str] | None = None,
    before: str | date | datetime | None = None,
    function: str | None = None,
) -> DeletionPlan:
    """Choose runs by uid, or by state, creation time (``before``) and function; add their children;
    set aside open runs of live drivers. Lost drivers' runs are ended first, so they can go."""
    names = uid_list(uids)
    states = check_states(state)
    moment = parse_before(before) if before is not None else None
    if names and (states or moment is not None or function is not None):
        raise ParamError("give run uids or filters (state, before, function), not both")
    if not names and not states and moment is None:
        raise ParamError("name the runs to delete: uids, or a state and/or a before date")
    store = project.store
    store.end_lost_runs()
    if names:
        chosen = {record.uid: record for record in (store.get_run(uid) for uid in names)}
    else:
        found = store.list_runs(function=function, state=states or None, created_before=moment)
        chosen = {record.uid: record for record in found}
    extra = [r for r in store.get_runs(store.descendants(list(chosen))) if r.uid not in chosen]
    chosen.update((record.uid, record) for record in extra)
    live = store.live_drivers({r.driver for r in chosen.values() if r.state in OPEN and r.driver})
    skipped: dict[str, str] = {}
    for record in chosen.values():
        if record.state in OPEN and record.driver in live:
            skipped[record.uid] = (
                f"still {record.state} under a live driver ({live[record.driver].describe()}); "
                f"cancel it first: shoal runs cancel {record.uid}"
            )
    changed = True
    while changed:  # a skipped run keeps its children
        changed = False
        for record in chosen.values():
            if record.uid not in skipped and record.parent in skipped:
                skipped[record.uid] = f"its parent {record.parent} is kept"
                changed = True
    kept = [record for record in chosen.values() if record.uid not in skipped]
    return DeletionPlan(
        project,
        kept,
        [(chosen[uid], why) for uid, why in skipped.items()],
        children=sum(1 for record in extra if record.uid not in skipped),
    )


def delete(project: Project, uids: Any = None, **filters: Any) -> DeletionResult:
    """:func:`plan_delete` then :meth:`DeletionPlan.execute`, without asking."""
    return plan_delete(project, uids, **filters).execute()


def _remove_files(project: Project, uids: list[str], artifacts: list[Any]) -> tuple[int, list[str], list[str]]:
    """Remove each deleted run's artifact folder, and any of its artifacts elsewhere in the store.

    Returns (artifacts removed, artifact URLs left in place, problems). Artifacts outside the
    project's artifact store (a URL the run only referenced) are left alone; inputs stored by
    content are shared between runs and kept.
    """
    import fsspec

    store = project.artifacts
    fs, root = store.fs, store.root
    protocols = _protocols(fs)
    runs_folder = f"{root}/{project.name}/runs/"
    targets = {f"{runs_folder}{uid}": 0 for uid in uids}  # path -> how many artifacts it holds
    outside: list[str] = []
    for artifact in artifacts:
        try:
            other, path = fsspec.core.url_to_fs(artifact.url)
        except (ValueError, ImportError):
            outside.append(artifact.url)
            continue
        if not protocols & _protocols(other) or not path.startswith(f"{root}/"):
            outside.append(artifact.url)
            continue
        folder = runs_folder + path[len(runs_folder) :].split("/", 1)[0] if path.startswith(runs_folder) else None
        key = folder if folder in targets else path
        targets[key] = targets.get(key, 0) + 1
    removed, problems = 0, []
    for target, count in targets.items():
        try:
            if fs.exists(target):
                fs.rm(target, recursive=True)
            removed += count
        except Exception as exc:  # noqa: BLE001 - report every file left behind, go on with the rest
            problems.append(f"could not remove {target}: {type(exc).__name__}: {exc}")
    for problem in problems:
        log.warning(problem)
    return removed, outside, problems


def _protocols(fs: Any) -> set[str]:
    return set(fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))
