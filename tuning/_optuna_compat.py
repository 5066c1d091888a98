"""Every use of Optuna's private attributes in shoal, in one place.

Optuna has no public API for these; each is pinned by a named test in ``tests/test_optuna_compat.py``
so an Optuna upgrade that changes one breaks that test, not a search. Everything else in
``shoal.tuning`` uses Optuna's public API only. Optuna is imported lazily (``import shoal.tuning``
must not load it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from optuna.storages.journal._file import BaseJournalFileLock as BaseJournalFileLock


def __getattr__(name: str) -> Any:
    # The base class of journal-file locks: ``JournalFileBackend(lock_obj=...)`` is typed with it,
    # and ``optuna.storages.journal`` exports only its two subclasses.
    if name == "BaseJournalFileLock":
        from optuna.storages.journal._file import BaseJournalFileLock

        return BaseJournalFileLock
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def trial_id(trial: Any) -> int:
    """The storage's id of a trial (``optuna.trial.Trial`` or ``FrozenTrial``): what every storage
    method takes; Optuna exposes only the per-study ``number``."""
    return trial._trial_id


def intermediate_values(trial: Any) -> dict[int, float]:
    """The values an ``optuna.trial.Trial`` has reported so far, as ``Trial.report`` itself reads
    them (its cached frozen trial, updated by each report; no storage read)."""
    return trial._cached_frozen_trial.intermediate_values


def stop_requested(study: Any) -> bool:
    """Whether ``Study.stop`` was called (by a sampler such as ``GridSampler`` when its grid is
    exhausted, or a callback) since the search began."""
    return bool(study._stop_flag)


@contextlib.contextmanager
def optimize_loop(study: Any) -> Iterator[None]:
    """Mark this thread as Optuna's optimize loop while shoal asks and tells.

    ``Study.stop`` works only inside Optuna's own loop (``GridSampler`` stops the study through it
    when the grid is exhausted), and ``Study.ask`` warns about heartbeats outside it. The stop flag
    starts cleared, as ``Study.optimize`` clears it.
    """
    local = study._thread_local
    before = getattr(local, "in_optimize_loop", False)
    local.in_optimize_loop = True
    study._stop_flag = False
    try:
        yield
    finally:
        local.in_optimize_loop = before


def heartbeat_enabled(storage: Any) -> bool:
    """Whether ``storage`` keeps heartbeats of running trials (an ``RDBStorage`` opened with a
    ``heartbeat_interval``), through its public methods (Optuna's own check lives in a private module)."""
    interval = getattr(storage, "get_heartbeat_interval", None)
    return callable(interval) and callable(getattr(storage, "record_heartbeat", None)) and interval() is not None


def journal_file(storage: Any) -> tuple[str, Any] | None:
    """The file path and lock object of a ``JournalStorage`` over a ``JournalFileBackend``, else None."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    backend = getattr(storage, "_backend", None) if isinstance(storage, JournalStorage) else None
    if not isinstance(backend, JournalFileBackend):
        return None
    return backend._file_path, getattr(backend, "_lock", None)
