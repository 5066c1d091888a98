"""Plain, immutable records the store hands out.

They are detached from the database on purpose: callers (CLI, run handles, other threads) can keep
and pass them around without holding a session or a connection.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

SHORT_HASH = 12


@dataclass(frozen=True, slots=True)
class FunctionRecord:
    """One stored version of a function, with the tags that currently point at it."""

    name: str
    hash: str
    spec: dict[str, Any]
    description: str | None
    labels: dict[str, Any]
    created_at: datetime
    tags: tuple[str, ...] = ()

    @property
    def short_hash(self) -> str:
        """The first 12 hex digits, enough to name a version in ``name@<hash>``."""
        return self.hash[:SHORT_HASH]


@dataclass(frozen=True, slots=True)
class ArtifactRecord:
    """Where one artifact of a run lives and how to read it back."""

    run_uid: str
    key: str
    url: str
    kind: str
    format: str | None
    size: int | None
    sha256: str | None
    meta: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One execution of one function version: inputs, outcome, timings and artifacts."""

    uid: str
    function: str
    function_hash: str
    parent: str | None
    iteration: int | None
    state: str
    params: dict[str, Any]
    inputs: dict[str, Any]
    results: dict[str, Any]
    metrics: dict[str, Any]
    error: dict[str, Any] | None
    logs: str
    attempts: int
    backend: str
    labels: dict[str, Any]
    created_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    updated_at: datetime
    artifacts: tuple[ArtifactRecord, ...] = ()
    driver: str | None = None  # the id of the process that drives it (see ``shoal.store.drivers``)
    cache_key: str | None = None  # the step cache key it ran under (see ``shoal.step_cache``)
    cached_from: str | None = None  # for a ``cached`` run: the uid of the run whose outputs it reuses


@dataclass(frozen=True, slots=True)
class ScalingEventRecord:
    """One recorded change in a backend's number of workers (``None`` counts: the engine did not say)."""

    backend: str
    time: datetime
    direction: str
    workers_before: int | None
    workers_after: int | None
    reason: str
