"""Crash recovery: what a driver that died left in its study and its run records, put right at resume.

Each driver registers on its study (``ATTR_DRIVER`` + host:pid) with its process identity, and labels
every trial it asks with that identity and the trial's run. A search that opens the study fails the
trials of drivers that are gone: at once when the driver ran on this machine and no process with its
pid and start time exists (psutil), through Optuna's heartbeat where the storage has one. Trials whose
run did finish are told instead, those that never started go back to the study's queue, and the
dead driver's open run records are mended from the study.
"""

from __future__ import annotations

import copy
import logging
import os
import socket
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from shoal.errors import ObjectiveMissingError, TuningError
from shoal.execution import error_dict
from shoal.store import drivers
from shoal.store.drivers import is_swept

from . import _optuna_compat as compat
from . import records

if TYPE_CHECKING:  # pragma: no cover
    from shoal.project import Project

    from .objective import Objective

log = logging.getLogger("shoal.tuning")

ATTR_DRIVER = "shoal:driver:"  # + host:pid -> the driver's process identity, and whether it is active
HOST = socket.gethostname()


def owner() -> dict[str, Any]:
    """This process's identity as studies record it."""
    return {"host": HOST, "pid": os.getpid(), "start": drivers.current().process_start}


def dead(owner: Mapping[str, Any]) -> bool:
    """True when ``owner`` names a driver process on this machine that no longer runs (its pid is
    gone, or now belongs to a process started at another time)."""
    pid = owner.get("pid")
    if owner.get("host") != HOST or not isinstance(pid, int) or isinstance(pid, bool):
        return False  # another machine's driver: left to the heartbeat, where the storage has one
    start = _start_time(owner.get("start"))
    if pid == os.getpid() and start is None:
        return True  # recorded without a start time this process has: an earlier process with our pid
    return not drivers.process_alive(pid, start)


def _start_time(value: Any) -> float | None:
    """A recorded start time in seconds since the epoch (psutil's); studies written by earlier
    versions hold the /proc clock ticks since boot as text, converted here."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and value.isdigit():
        import psutil

        return psutil.boot_time() + int(value) / os.sysconf("SC_CLK_TCK")
    return None


class Recovery:
    """Puts right, in one study, what drivers that died left (run once as a search opens it)."""

    def __init__(
        self, study: Any, storage: Any, project: Project, objective: Objective, *, retries: int, heartbeat: bool
    ) -> None:
        self.study = study
        self.storage = storage
        self.project = project
        self.objective = objective
        self.retries = retries
        self.heartbeat = heartbeat
        self.name = study.study_name

    def run(self) -> None:
        """Fail trials whose driver died (same machine, process gone), and heartbeat-stale ones;
        give back those that never started, and finish the dead drivers' open run records."""
        import optuna
        from optuna.trial import TrialState

        callback = None
        if self.retries:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                callback = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=self.retries)
        dead_parents = set()
        # A trial asked by a driver killed before it could label the trial has no owner: it is stale
        # when no driver registered on the study may still be alive.
        registered = [v for k, v in self.study.user_attrs.items() if k.startswith(ATTR_DRIVER) and isinstance(v, dict)]
        unlabelled_stale = not any(d.get("active") and not dead(d) for d in registered)
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            info = trial.user_attrs.get("shoal") or {}
            who = info.get("driver") or {}
            if not (dead(who) if who else unlabelled_stale):
                if not who:
                    log.warning(
                        "study %s: trial %d is running without a shoal driver; left as it is", self.name, trial.number
                    )
                continue
            if self._recover(trial, info.get("run")) or self._requeue_unstarted(trial, info.get("run")):
                dead_parents.add(info.get("parent"))
                continue
            named = f"(pid {who.get('pid')} on {who.get('host')}) " if who else ""
            note = f"failed at resume: its driver {named}died while it ran"
            self.storage.set_trial_user_attr(compat.trial_id(trial), "shoal_error", note)
            try:
                if not self.storage.set_trial_state_values(compat.trial_id(trial), state=TrialState.FAIL):
                    continue
            except optuna.exceptions.UpdateFinishedTrialError:
                continue
            log.warning("study %s: trial %d %s", self.name, trial.number, note)
            if callback is not None:
                callback(self.study, copy.deepcopy(self.storage.get_trial(compat.trial_id(trial))))
            records.fail_record(self.project, info.get("run"), "DriverLost", note)
            if info.get("parent"):
                dead_parents.add(info["parent"])
        for key, entry in self.study.user_attrs.items():
            if key.startswith(ATTR_DRIVER) and isinstance(entry, dict) and entry.get("active") and dead(entry):
                if entry.get("parent"):
                    self._mend_children(entry["parent"])
                    dead_parents.add(entry["parent"])
                self.study.set_user_attr(key, {**entry, "active": False})
        for parent in dead_parents - {None}:
            note = "the tuning driver died; the search was resumed by another run"
            records.fail_record(self.project, parent, "DriverLost", note)
        if self.heartbeat:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(self.study)

    def _recover(self, trial: Any, uid: str | None) -> bool:
        """Tell a dead driver's trial whose run did finish and was recorded (it died before telling)."""
        import optuna
        from optuna.trial import TrialState

        if not uid:
            return False
        try:
            run = self.project.runs.get(uid)
        except Exception:  # noqa: BLE001 - no record: the trial is failed instead
            return False
        if run.state not in ("completed", "pruned"):
            return False
        try:
            if run.state == "pruned":
                self.study.tell(trial.number, state=TrialState.PRUNED)
            else:
                values = self.objective.values(run.results)
                self.study.tell(trial.number, values if self.objective.multi else values[0])
        except (optuna.exceptions.UpdateFinishedTrialError, TuningError, ObjectiveMissingError):
            return False
        log.warning("study %s: trial %d of a dead driver had finished; told it at resume", self.name, trial.number)
        return True

    def _requeue_unstarted(self, trial: Any, uid: str | None) -> bool:
        """Give a dead driver's trial whose run never started back to the study's queue (WAITING):
        nothing ran, so nothing failed. Its run record ends cancelled, never started."""
        from optuna.trial import TrialState

        if not uid:
            return False
        try:
            record = self.project.store.get_run(uid)
            # Pending, or ended as never started by the store's sweep of lost drivers (is_swept).
            if not (record.state == "pending" or (is_swept(record) and record.started_at is None)):
                return False
            if not self.storage.set_trial_state_values(compat.trial_id(trial), state=TrialState.WAITING):
                return False
        except Exception:  # noqa: BLE001 - no record, or the trial moved on: failed instead
            return False
        message = "never started: its tuning driver died; the trial went back to the study's queue"
        records.finish_record(self.project, uid, {"state": "cancelled", "error": error_dict("CancelledError", message)})
        log.warning("study %s: trial %d of a dead driver never started; queued again", self.name, trial.number)
        return True

    def _mend_children(self, parent: str) -> None:
        """Finish the records a dead driver left open: a trial a worker told (complete or pruned)
        gives its run the trial's values and parameters; any other run failed with its driver."""
        from optuna.trial import TrialState

        trials = {t.number: t for t in self.study.get_trials(deepcopy=False)}
        for run in self.project.store.list_runs(parent=parent, state=("pending", "running", "failed")):
            if run.state == "failed" and not is_swept(run):  # swept: left open, ended by the store
                continue
            trial = trials.get(run.iteration)
            told = (
                trial is not None
                and (trial.user_attrs.get("shoal") or {}).get("run") == run.uid
                and trial.state in (TrialState.COMPLETE, TrialState.PRUNED)
            )
            if trial is None or not told:
                note = "its tuning driver died before the run's outcome was recorded"
                records.finish_record(self.project, run.uid, records.failed("DriverLost", note))
                continue
            pruned = trial.state == TrialState.PRUNED
            results: dict[str, Any] = {} if pruned else self.objective.results(trial.values)
            records.finish_record(
                self.project,
                run.uid,
                {
                    "state": "pruned" if pruned else "completed",
                    "params": records.recordable({**run.params, **trial.params}),
                    "results": records.recordable(results),
                    "started_at": run.started_at or records.utc(trial.datetime_start),
                    "ended_at": records.utc(trial.datetime_complete) or records.now(),
                    "logs": run.logs + "[shoal] the tuning driver died before recording this run; its trial's "
                    "values and parameters were restored from the study (logs, metrics and other results are lost)\n",
                },
            )
