"""Every use of Optuna's private attributes in shoal, in one place.

Optuna has no public API for these; each is pinned by a named test in ``tests/test_optuna_compat.py``
so an Optuna upgrade that changes one breaks that test, not a search. Everything else in
``shoal.tuning`` uses Optuna's public API only. Optuna is imported lazily (``import shoal.tuning``
must not load it).
"""

from __future__ import annotations

import contextlib
import copy
import json
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


def forget_cached_trials(study: Any) -> None:
    """Make this thread's next sampling for ``study`` read its trials from the storage again, as
    ``Study.ask`` and ``Study.tell`` make it: samplers read a study's trials through a per-thread
    cache (``Study._get_trials(use_cache=True)``), which only those two empty. A thread that samples
    for a study it neither asks nor tells in (an in-process run of the driver's study) would
    otherwise sample every later trial from the trials it saw first."""
    study._thread_local.cached_all_trials = None


def reusable(sampler: Any) -> bool:
    """Whether ``reseed`` can make ``sampler``, for another trial of the same study, what a new one
    would be: Optuna's random and TPE samplers, whose state across trials is their random streams
    and, for TPE, the study's search space as far as it has read the study (which a new one reads
    in full: the same space)."""
    import optuna

    return type(sampler) in (optuna.samplers.RandomSampler, optuna.samplers.TPESampler)


def reseed(sampler: Any, seed: int) -> None:
    """Give a ``reusable`` sampler, in place, the random state a new one built with ``seed`` has.
    Building one draws an OS-seeded NumPy random state per random stream before seeding it (~0.5 ms,
    measured: about a tenth of a worker's CPU per short trial); seeding the streams it has is what
    that construction ends with."""
    sampler._rng.rng.seed(seed=seed)
    if hasattr(sampler, "_random_sampler"):  # TPE's own random sampler, for its first trials
        sampler._random_sampler._rng.rng.seed(seed=seed)


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


def create_running_trials(storage: Any, study_id: int, user_attrs: list[dict[str, Any]]) -> list[int] | None:
    """Create one RUNNING trial per ``user_attrs`` entry in a single append of a ``JournalStorage``
    (one lock and one ``fsync`` for them all, where ``create_new_trial`` takes one each); their
    storage ids, in order. None for other storages and for backends that snapshot per created trial
    (Redis): the caller creates them one by one.

    The lines are Optuna's own ``CREATE_TRIAL`` operation, as ``create_new_trial`` writes it for a
    RUNNING template trial. One append is one write under the file lock, so the trials are
    consecutive in the journal and get consecutive ids ending at the last this thread created.
    """
    from datetime import datetime, timezone

    from optuna.storages import JournalStorage
    from optuna.storages.journal import BaseJournalBackend
    from optuna.storages.journal._base import BaseJournalSnapshot
    from optuna.storages.journal._storage import JournalOperation
    from optuna.trial import TrialState

    backend = getattr(storage, "_backend", None) if isinstance(storage, JournalStorage) else None
    if not isinstance(backend, BaseJournalBackend) or isinstance(backend, BaseJournalSnapshot) or not user_attrs:
        return None
    start = datetime.now(tz=timezone.utc).isoformat(timespec="microseconds")
    fields = {"study_id": study_id, "datetime_start": start, "state": TrialState.RUNNING, "value": None, "values": None}
    fields |= {"distributions": {}, "params": {}, "system_attrs": {}, "intermediate_values": {}}
    with storage._thread_lock:
        replay = storage._replay_result
        head = {"op_code": JournalOperation.CREATE_TRIAL, "worker_id": replay.worker_id}
        backend.append_logs([{**head, **fields, "user_attrs": attrs} for attrs in user_attrs])
        storage._sync_with_backend()
        last = replay._last_created_trial_id_by_this_process
        ids = list(range(last - len(user_attrs) + 1, last + 1))
        written = [replay._trials[i].user_attrs for i in ids if i in replay._trials]
    if written != json.loads(json.dumps(user_attrs)):  # never expected: say so rather than mislink
        raise RuntimeError(f"journal trials {ids} are not the ones just created in one append")
    return ids


@contextlib.contextmanager
def params_in_one_append(trial: Any) -> Iterator[None]:
    """Parameters ``trial`` (an ``optuna.trial.Trial``) suggests in the block reach its journal
    storage in one append at the end of the block (one lock and one ``fsync`` for all of them,
    where ``set_trial_param`` takes one each), as Optuna's own ``SET_TRIAL_PARAM`` lines. The
    trial's ``storage`` attribute, which ``Trial._suggest`` writes through, holds them meanwhile:
    the trial itself keeps each value as it is suggested, and what is written before a failure
    in the block is still written. Other storages are written as usual."""
    with params_held(trial) as held:
        try:
            yield
        finally:
            if held is not None:
                held.write()


@contextlib.contextmanager
def params_held(trial: Any) -> Iterator[_HeldParams | None]:
    """As ``params_in_one_append``, but the block gets the holder and writes it itself, when it
    chooses (``write()``: one append; until then the values are the trial's alone, unseen by its
    storage even in this process); None for other storages, written as usual."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import BaseJournalBackend
    from optuna.storages.journal._base import BaseJournalSnapshot

    storage = trial.storage
    backend = getattr(storage, "_backend", None) if isinstance(storage, JournalStorage) else None
    if not isinstance(backend, BaseJournalBackend) or isinstance(backend, BaseJournalSnapshot):
        yield None
        return
    held = _HeldParams(storage)
    trial.storage = held
    # The trial's cached FrozenTrial is the journal's own object until the next write replaces it;
    # ``Trial._suggest`` adds each value to it, which would show held values as written in this
    # process (and a later sampling of the same trial here would take them as already written).
    trial._cached_frozen_trial = copy.deepcopy(trial._cached_frozen_trial)
    try:
        yield held
    finally:
        trial.storage = storage


class _HeldParams:
    """A journal storage whose ``set_trial_param`` is held until ``write`` (params_held)."""

    def __init__(self, storage: Any) -> None:
        self._storage = storage
        self._lines: list[dict[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._storage, name)

    def set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float, distribution: Any) -> None:
        from optuna.distributions import distribution_to_json

        self._lines.append(
            {
                "trial_id": trial_id,
                "param_name": param_name,
                "param_value_internal": param_value_internal,
                "distribution": distribution_to_json(distribution),
            }
        )

    def write(self) -> None:
        from optuna.storages.journal._storage import JournalOperation

        if not self._lines:
            return
        storage = self._storage
        with storage._thread_lock:
            head = {"op_code": JournalOperation.SET_TRIAL_PARAM, "worker_id": storage._replay_result.worker_id}
            storage._backend.append_logs([{**head, **line} for line in self._lines])
            storage._sync_with_backend()
        self._lines = []
