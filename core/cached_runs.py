"""Runs that reuse an earlier run's outputs: what the dispatch path asks before it launches a run.

``resolve_cached`` turns a call (function, converted parameters, stored inputs, ``CacheOptions``)
into one of: ``Cached`` (a completed run with the same key whose artifacts are all still present:
record a ``cached`` run, do not run), ``Claim`` (this driver runs the key; the claim ends with the
run's recorded outcome), ``Busy`` (another live driver runs it: ``wait()`` for its outcome), or None
(caching off, or the call has no cache key: run it as usual). Engine-agnostic: ``fn.run``/``submit``/
``map`` and pipeline steps call it alike.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple

from .artifacts import Artifact
from .errors import CodeError, UncacheableError
from .runs import Run, RunHandle
from .step_cache import CacheOptions, cache_key, with_defaults

if TYPE_CHECKING:  # pragma: no cover
    from .function import Function
    from .project import Project
    from .store.cache import ClaimAttempt, StepCache
    from .store.records import RunRecord

log = logging.getLogger("shoal.cache")
FIRST_POLL = 0.05  # seconds between looks at another driver's claim, doubling up to LAST_POLL
LAST_POLL = 1.0


@dataclasses.dataclass(frozen=True)
class Cached:
    """A completed run of the same key, every artifact of it present: reuse it, do not run."""

    key: str
    source: RunRecord


@dataclasses.dataclass(frozen=True)
class Claim:
    """This driver holds the key for run ``uid``: run it (the claim ends with its recorded outcome)."""

    key: str
    uid: str
    cache: StepCache = dataclasses.field(repr=False)

    def stamp(self, record: dict[str, Any]) -> dict[str, Any]:
        """Put the key on the run record before it is created (the record is returned)."""
        record["cache_key"] = self.key
        return record

    def release(self) -> None:
        """Give the key up without running (the run was never created or launched)."""
        self.cache.release([self.uid])


@dataclasses.dataclass(frozen=True)
class Busy:
    """Another live driver runs the key (its run ``holder``); ``wait()`` for its outcome."""

    key: str
    holder: str
    uid: str
    not_before: datetime | None
    cache: StepCache = dataclasses.field(repr=False)

    def wait(self, stop: threading.Event | None = None) -> Cached | Claim | Busy:
        """Poll the store until the holder's run ends: completed -> ``Cached``; failed, cancelled,
        or its driver lost -> this driver claims the key -> ``Claim``. ``stop`` set -> this Busy."""
        delay = FIRST_POLL
        outcome: Cached | Claim | Busy = self
        while isinstance(outcome, Busy):
            if stop is not None and stop.is_set():
                return outcome
            (stop or threading.Event()).wait(delay)
            delay = min(LAST_POLL, delay * 2)
            outcome = _attempt(self.cache, self.key, self.uid, self.not_before)
        return outcome


def resolve_cached(
    project: Project,
    fn: Function,
    params: Mapping[str, Any],
    inputs: Mapping[str, Any],
    options: CacheOptions,
    *,
    uid: str,
) -> Cached | Claim | Busy | None:
    """Whether run ``uid`` of ``fn`` must run (see the module docstring). ``params`` are converted
    (defaults included), ``inputs`` stored (``Artifact``s, or ``ContentDigest``s for values to come)."""
    return resolve_many(project, [CacheCall(fn, params, inputs, options, uid)])[0]


class CacheCall(NamedTuple):
    """One call ``resolve_many`` looks up: the arguments of ``resolve_cached``."""

    fn: Function
    params: Mapping[str, Any]
    inputs: Mapping[str, Any]
    options: CacheOptions
    uid: str


def resolve_many(project: Project, calls: Sequence[CacheCall]) -> list[Cached | Claim | Busy | None]:
    """``resolve_cached`` for many calls with one store transaction (a map, a pipeline's steps)."""
    keyed: list[tuple[int, str, str, datetime | None]] = []
    handlers: dict[str, Callable | None] = {}  # by function hash: loaded once per function
    for index, call in enumerate(calls):
        if not call.options.enabled:
            continue
        if call.fn.hash not in handlers:
            handlers[call.fn.hash] = _handler(call.fn)
        try:
            params = with_defaults(handlers[call.fn.hash], call.params, call.inputs)
            key = cache_key(call.fn.hash, params, call.inputs, ignore=call.options.ignore, version=call.options.version)
        except UncacheableError as exc:
            log.info("run %s of %s is not cached: %s", call.uid[:12], call.fn.name, exc)
            continue
        keyed.append((index, key, call.uid, _not_before(call.options)))
    outcomes: list[Cached | Claim | Busy | None] = [None] * len(calls)
    if keyed:
        cache = project.store.cache
        attempts = cache.attempt([(key, uid, not_before) for _, key, uid, not_before in keyed])
        for (index, key, uid, not_before), found in zip(keyed, attempts):
            outcomes[index] = _outcome(cache, key, uid, not_before, found)
        # Claimed, then found reusable after all: give those claims back.
        cache.release(
            [uid for (i, _, uid, _), found in zip(keyed, attempts) if found.held and isinstance(outcomes[i], Cached)]
        )
    return outcomes


def _handler(fn: Function) -> Callable | None:
    """The handler, or None where its code cannot load here (a package only the workers have)."""
    try:
        return fn.callable
    except CodeError:
        return None


def _not_before(options: CacheOptions) -> datetime | None:
    """The oldest end time a reusable run may have: ``cache_expires`` ago; with ``refresh``, now
    (only a run that ends from now on, such as another driver's run being waited for, is reused)."""
    now = datetime.now().astimezone()
    bounds = []
    if options.expires is not None:
        bounds.append(now - options.expires)
    if options.refresh:
        bounds.append(now)
    return max(bounds) if bounds else None


def _attempt(cache: StepCache, key: str, uid: str, not_before: datetime | None) -> Cached | Claim | Busy:
    (found,) = cache.attempt([(key, uid, not_before)])
    outcome = _outcome(cache, key, uid, not_before, found)
    if found.held and isinstance(outcome, Cached):
        cache.release([uid])
    return outcome


def _outcome(
    cache: StepCache, key: str, uid: str, not_before: datetime | None, found: ClaimAttempt
) -> Cached | Claim | Busy:
    """What a claim attempt means for the run (a claim that turns out not needed is the caller's to release)."""
    source = next((record for record in found.candidates if artifacts_present(record)), None)
    if source is not None:
        return Cached(key, source)
    if found.held:
        return Claim(key, uid, cache)
    assert found.holder is not None
    return Busy(key, found.holder, uid, not_before, cache)


def artifacts_present(record: RunRecord) -> bool:
    """True if every artifact the run recorded is still in its store (a run whose outputs were
    deleted is not reused)."""
    import fsspec

    for artifact in record.artifacts:
        try:
            fs, path = fsspec.core.url_to_fs(artifact.url)
            if not fs.exists(path):
                log.info(
                    "run %s is not reused: its artifact %r is gone (%s)", record.uid[:12], artifact.key, artifact.url
                )
                return False
        except (OSError, ValueError, ImportError) as exc:
            log.info("run %s is not reused: its artifact %r cannot be checked: %s", record.uid[:12], artifact.key, exc)
            return False
    return True


def record_cached(
    project: Project, records: Sequence[dict[str, Any]], outcomes: Sequence[Cached], *, new: bool = True
) -> list[Run]:
    """Record runs in state ``cached`` (one transaction), each reusing its outcome's source run: its
    results, metrics and artifacts, ``cached_from`` naming it. ``records`` are the dicts
    ``Driver.new_record`` made: new runs (``new``; do not create them too), or runs already recorded
    pending. Returns the runs as recorded."""
    now = datetime.now().astimezone()
    items = []
    runs = []
    for record, cached in zip(records, outcomes):
        source = cached.source
        artifacts = [{field: getattr(a, field) for field in _ARTIFACT_FIELDS} for a in source.artifacts]
        row = {
            **record,
            "state": "cached",
            "results": dict(source.results),
            "metrics": dict(source.metrics),
            "attempts": 0,
            "cache_key": cached.key,
            "cached_from": source.uid,
            "started_at": now,
            "ended_at": now,
        }
        items.append((row, artifacts))
        runs.append(run_from_row(row, artifacts))
    project.store.cache.record_cached(items, new=new)
    return runs


_ARTIFACT_FIELDS = ("key", "url", "kind", "format", "size", "sha256", "meta")


def finished_handle(run: Run) -> RunHandle:
    """A handle that is done already (a cached run: there is nothing to wait for or cancel)."""
    handle = RunHandle(run.uid, run.function, lambda handle: False)
    handle.set_run(run)
    return handle


def run_from_row(row: dict[str, Any], artifacts: Sequence[dict[str, Any]] = ()) -> Run:
    """The Run a run dict (as ``Driver.new_record`` makes and the store writes) stands for."""
    return Run(
        uid=row["uid"],
        function=row["function"],
        function_hash=row["function_hash"],
        state=row["state"],
        params=row["params"],
        inputs=row["inputs"],
        results=row.get("results") or {},
        metrics=row.get("metrics") or {},
        artifacts={a["key"]: Artifact.from_record(a) for a in artifacts},
        error=row.get("error"),
        parent=row.get("parent"),
        iteration=row.get("iteration"),
        backend=row.get("backend", ""),
        labels=dict(row.get("labels") or {}),
        created_at=row.get("created_at"),
        started_at=row.get("started_at"),
        ended_at=row.get("ended_at"),
        cache_key=row.get("cache_key"),
        cached_from=row.get("cached_from"),
    )
