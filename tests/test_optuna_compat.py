"""What shoal relies on in Optuna's private attributes (``shoal.tuning._optuna_compat``), one test each.

An Optuna upgrade that changes one of them fails the test named for it, instead of a search
somewhere. Real Optuna studies, in memory or in files under ``tmp_path``.
"""

from __future__ import annotations

import warnings

import optuna
import pytest
from optuna.storages import JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock
from optuna.trial import TrialState

from shoal.tuning import _optuna_compat as compat
from shoal.tuning.journal_lock import QueuedJournalLock

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _rdb(tmp_path, **options) -> RDBStorage:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RDBStorage(f"sqlite:///{tmp_path / 'studies.db'}", **options)


def test_trial_id_is_what_storage_methods_take_for_a_trial_and_a_frozen_trial():
    study = optuna.create_study()
    study.enqueue_trial({"x": 1.0})
    first, second = study.ask(), study.ask()
    storage = study._storage
    for trial in (first, second):
        assert storage.get_trial(compat.trial_id(trial)).number == trial.number
    study.tell(first, 1.0)
    frozen = {t.number: t for t in study.get_trials(deepcopy=False)}
    assert compat.trial_id(frozen[first.number]) == compat.trial_id(first)
    assert compat.trial_id(frozen[second.number]) == compat.trial_id(second) != compat.trial_id(first)
    assert storage.set_trial_state_values(compat.trial_id(second), state=TrialState.WAITING)
    assert study.trials[second.number].state == TrialState.WAITING


def test_intermediate_values_is_the_dict_report_updates_in_place():
    """RecordedTrial.report takes the dict before ``Trial.report`` and reads the new value from it."""
    trial = optuna.create_study().ask()
    known = compat.intermediate_values(trial)
    assert known == {}
    trial.report(0.5, 3)
    assert known == {3: 0.5}  # the same object, updated by report
    with pytest.warns(UserWarning, match="already reported"):
        trial.report(0.9, 3)  # a known step: ignored, the dict unchanged
    assert known == {3: 0.5} and compat.intermediate_values(trial) is known


def test_optimize_loop_lets_study_stop_and_stop_requested_reads_it():
    study = optuna.create_study()
    with pytest.raises(RuntimeError):
        study.stop()  # outside Optuna's own loop
    with compat.optimize_loop(study):
        assert not compat.stop_requested(study)
        study.stop()
        assert compat.stop_requested(study)
    with pytest.raises(RuntimeError):
        study.stop()  # the mark is taken back on leaving
    with compat.optimize_loop(study):
        assert not compat.stop_requested(study)  # cleared at the start, as Study.optimize clears it


def test_grid_sampler_stops_the_study_inside_the_loop_once_the_grid_is_exhausted():
    """How a search learns it ended because the grid ran out (stopped="grid")."""
    study = optuna.create_study(sampler=optuna.samplers.GridSampler({"x": [1, 2]}, seed=0))
    with compat.optimize_loop(study):
        for _ in range(2):
            assert not compat.stop_requested(study)
            trial = study.ask()
            study.tell(trial, float(trial.suggest_int("x", 1, 2)))
        assert compat.stop_requested(study)


def test_ask_inside_the_loop_does_not_warn_about_heartbeats(tmp_path):
    study = optuna.create_study(storage=_rdb(tmp_path, heartbeat_interval=60, grace_period=120))
    with pytest.warns(UserWarning, match="Heartbeat"):
        study.tell(study.ask(), 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with compat.optimize_loop(study):
            study.tell(study.ask(), 2.0)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.COMPLETE]


def test_heartbeat_enabled_only_for_a_storage_with_a_heartbeat_interval(tmp_path):
    with_beat = _rdb(tmp_path, heartbeat_interval=60, grace_period=120)
    assert compat.heartbeat_enabled(with_beat)
    assert not compat.heartbeat_enabled(_rdb(tmp_path))
    assert not compat.heartbeat_enabled(optuna.storages.InMemoryStorage())
    journal = str(tmp_path / "studies.journal")
    assert not compat.heartbeat_enabled(JournalStorage(JournalFileBackend(journal)))
    # what "enabled" is relied on for: record_heartbeat, then fail_stale_trials finds nothing stale
    study = optuna.create_study(storage=with_beat)
    with compat.optimize_loop(study):
        trial = study.ask()
    with_beat.record_heartbeat(compat.trial_id(trial))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    assert study.trials[0].state == TrialState.RUNNING


def test_journal_file_names_the_path_and_lock_of_a_journal_file_storage(tmp_path):
    path = str(tmp_path / "studies.journal")
    lock = QueuedJournalLock(path)
    assert compat.journal_file(JournalStorage(JournalFileBackend(path, lock_obj=lock))) == (path, lock)
    found = compat.journal_file(JournalStorage(JournalFileBackend(path)))
    assert found is not None and found[0] == path and isinstance(found[1], JournalFileSymlinkLock)
    assert compat.journal_file(_rdb(tmp_path)) is None
    assert compat.journal_file(optuna.storages.InMemoryStorage()) is None


def test_base_journal_file_lock_is_the_base_of_optunas_locks_and_a_backend_uses_ours(tmp_path):
    base = compat.BaseJournalFileLock
    assert issubclass(JournalFileSymlinkLock, base) and isinstance(QueuedJournalLock("x.journal"), base)
    path = str(tmp_path / "studies.journal")
    study = optuna.create_study(storage=JournalStorage(JournalFileBackend(path, lock_obj=QueuedJournalLock(path))))
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=3)
    reopened = optuna.load_study(study_name=study.study_name, storage=JournalStorage(JournalFileBackend(path)))
    assert len(reopened.trials) == 3
    with pytest.raises(AttributeError):
        compat.NoSuchName  # noqa: B018 - only the names the module defines


def _history(trials: int) -> optuna.Study:
    """A study of two parameters whose first ``trials`` trials are told (the same ones every call)."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(_objective, n_trials=trials)
    return study


def _objective(trial) -> float:
    return (trial.suggest_float("x", -3, 3) - 1) ** 2 + (trial.suggest_float("y", -3, 3) + 1) ** 2


def _suggestions(sampler, study: optuna.Study, draws: int = 4) -> list[float]:
    """What ``sampler`` suggests for ``draws`` more trials of ``study``, each told before the next."""
    study.sampler = sampler
    found = []
    for _ in range(draws):
        trial = study.ask()
        study.tell(trial, _objective(trial))
        found += [trial.params["x"], trial.params["y"]]
    return found


@pytest.mark.parametrize("kind", ["tpe", "random"])
@pytest.mark.parametrize("told", [12, 2], ids=["past-start-up", "start-up"])
def test_a_sampler_reseeded_within_its_study_draws_what_a_new_one_with_that_seed_draws(kind, told):
    """Both random streams (TPE's own and its start-up sampler's) and, for the multivariate TPE,
    the study's search space it has read: a study's next trial gets the draws of a new sampler."""
    make = {
        "tpe": lambda seed: optuna.samplers.TPESampler(seed=seed),
        "random": lambda seed: optuna.samplers.RandomSampler(seed=seed),
    }[kind]
    mine, theirs = _history(told), _history(told)  # the same trials told to each
    used = make(3)
    assert compat.reusable(used)
    assert _suggestions(used, mine) == _suggestions(make(3), theirs)  # its streams advanced, space read
    compat.reseed(used, 7)
    assert _suggestions(used, mine) == _suggestions(make(7), theirs)


def test_samplers_with_state_beyond_their_random_streams_are_not_reusable():
    assert not compat.reusable(optuna.samplers.NSGAIISampler(seed=1))
    assert not compat.reusable(optuna.samplers.GridSampler({"x": [0, 1]}))


def test_forget_cached_trials_makes_this_threads_samplers_read_the_storage_again():
    """Samplers read a study's trials through a per-thread cache that only ask and tell empty."""
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, study_name="cached")
    study.optimize(_objective, n_trials=2)
    assert len(study._get_trials(deepcopy=False, use_cache=True)) == 2  # this thread's view, now cached
    optuna.load_study(study_name="cached", storage=storage).optimize(_objective, n_trials=1)  # told elsewhere
    assert len(study._get_trials(deepcopy=False, use_cache=True)) == 2  # still the cached view
    compat.forget_cached_trials(study)
    assert len(study._get_trials(deepcopy=False, use_cache=True)) == 3
