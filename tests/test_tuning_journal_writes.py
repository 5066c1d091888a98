"""Journal writes shoal groups into one append: an engine task's trials created together on the driver
(``create_running_trials``), a trial's sampled parameters written together on its worker
(``params_in_one_append``). Both write Optuna's private journal lines (``_optuna_compat``): each test
pins that what they write reads back as what Optuna's own calls write, one line per call, on a real
journal file under shoal's lock.
"""

from __future__ import annotations

import json

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from shoal.tuning import _optuna_compat as compat
from shoal.tuning.journal_lock import QueuedJournalLock

optuna.logging.set_verbosity(optuna.logging.WARNING)


class CountingBackend(JournalFileBackend):
    """A journal file backend that counts its appends (one lock and ``fsync`` each)."""

    appends = 0

    def append_logs(self, logs):
        self.appends += 1
        super().append_logs(logs)


def _journal(path) -> JournalStorage:
    return JournalStorage(CountingBackend(str(path), lock_obj=QueuedJournalLock(str(path))))


def _comparable(trial) -> tuple:
    return (trial.state, trial.params, trial.distributions, trial.user_attrs, trial.system_attrs, trial.values)


def test_trials_created_in_one_append_read_back_as_create_new_trial_makes_them(tmp_path):
    storage = _journal(tmp_path / "s.journal")
    study_id = optuna.create_study(study_name="s", storage=storage)._study_id
    links = [{"shoal": {"run": f"run-{i}", "driver": {"pid": i}}} for i in range(3)]
    one_by_one = [
        storage.create_new_trial(
            study_id, template_trial=optuna.trial.create_trial(state=TrialState.RUNNING, user_attrs=link)
        )
        for link in links
    ]
    appends = storage._backend.appends
    ids = compat.create_running_trials(storage, study_id, links)
    assert storage._backend.appends == appends + 1
    assert ids == [one_by_one[-1] + 1 + i for i in range(3)]
    reread = _journal(tmp_path / "s.journal")  # another process's view: the lines as written
    for made, grouped in zip(one_by_one, ids):
        for view in (storage, reread):
            theirs, ours = view.get_trial(made), view.get_trial(grouped)
            assert _comparable(ours) == _comparable(theirs) and ours.state == TrialState.RUNNING
            assert ours.number == theirs.number + 3 and ours.datetime_start is not None
    with open(tmp_path / "s.journal") as journal:
        codes = [json.loads(line)["op_code"] for line in journal]
    assert codes[-3:] == [4, 4, 4]  # Optuna's CREATE_TRIAL, one line per trial
    # The study runs on: the grouped trials are told as any other.
    study = optuna.load_study(study_name="s", storage=storage)
    study.tell(study.trials[ids[0]].number, 1.0)
    assert storage.get_trial(ids[0]).state == TrialState.COMPLETE


def test_other_storages_create_trials_one_by_one(tmp_path):
    """None tells the caller (``Asker.ask_many``) to fall back on one write per trial."""
    for storage in (optuna.storages.InMemoryStorage(), optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 's.db'}")):
        study_id = optuna.create_study(storage=storage)._study_id
        assert compat.create_running_trials(storage, study_id, [{"a": 1}, {"a": 2}]) is None


def test_parameters_suggested_together_are_written_in_one_append_as_set_trial_param_writes_them(tmp_path):
    storage = _journal(tmp_path / "p.journal")
    study = optuna.create_study(study_name="p", storage=storage, sampler=optuna.samplers.RandomSampler(seed=1))
    alone = study.ask()
    expected = {"x": alone.suggest_float("x", 0, 1), "n": alone.suggest_int("n", 1, 9, log=True)}
    expected["c"] = alone.suggest_categorical("c", ["a", "b"])
    together = study.ask()
    appends = storage._backend.appends
    with compat.params_in_one_append(together):
        got = {"x": together.suggest_float("x", 0, 1), "n": together.suggest_int("n", 1, 9, log=True)}
        got["c"] = together.suggest_categorical("c", ["a", "b"])
        assert _journal(tmp_path / "p.journal").get_trial(together._trial_id).params == {}  # held till the end
        assert storage.get_trial(together._trial_id).params == {}  # ... unseen in this process too
    assert storage._backend.appends == appends + 1
    assert together.storage is storage and together.params == got
    reread = _journal(tmp_path / "p.journal")
    for view in (storage, reread):
        frozen = view.get_trial(together._trial_id)
        assert frozen.params == got and frozen.distributions == view.get_trial(alone._trial_id).distributions
    assert view.get_trial(alone._trial_id).params == expected
    study.tell(together, 0.5)  # told as usual afterwards
    assert storage.get_trial(together._trial_id).state == TrialState.COMPLETE


def test_parameters_suggested_before_a_failure_in_the_block_are_still_written(tmp_path):
    storage = _journal(tmp_path / "f.journal")
    trial = optuna.create_study(study_name="f", storage=storage).ask()
    with pytest.raises(ValueError, match="boom"), compat.params_in_one_append(trial):
        x = trial.suggest_float("x", 0, 1)
        raise ValueError("boom")
    assert trial.storage is storage and _journal(tmp_path / "f.journal").get_trial(trial._trial_id).params == {"x": x}


def test_other_storages_write_each_parameter_as_usual(tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    trial = optuna.create_study(storage=url).ask()
    storage = trial.storage
    with compat.params_in_one_append(trial):
        assert trial.storage is storage
        x = trial.suggest_float("x", 0, 1)
        assert optuna.storages.RDBStorage(url).get_trial(trial._trial_id).params == {"x": x}
