"""The ask/tell loop: ask a trial as soon as a slot frees, run it as a shoal run, tell it as it ends.

One thread (the caller's) owns the Optuna study: it asks, launches runs on the backend (which
return at once), and tells each trial the moment its run's handle reports done through a queue, so
a slow trial never holds back the others. Every trial is a child run of one parent run (``parent``).

Short trials travel in batches, as ``fn.map``'s runs do (``shoal.batching``): once the first trial
of every slot has shown how long a trial takes, trials shorter than ~50 ms go several to an engine
task (about ``TRIAL_BATCH_SECONDS`` of them), run one after the other on one worker. Each is still
sampled where it starts and told where it ends (``TrialScope``), so a batch's trials see each
other's results and the others' as they come; a trial followed by another of its task has its tell
queued behind that one's start.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import queue
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from shoal import batching
from shoal.errors import SearchFailedError
from shoal.execution import error_dict

from . import _optuna_compat as compat
from . import records
from . import storage as storages
from .asking import Asker
from .parent import ParentRun
from .progress import Progress
from .recovery import owner
from .result import TuneResult
from .trial_scope import TrialScope

if TYPE_CHECKING:  # pragma: no cover
    from shoal.runs import RunHandle

    from .driver import Search

log = logging.getLogger("shoal.tuning")

# Seconds of trials one engine task carries, three times a map's batch (``shoal.batching``): a
# trial is still sampled and told where it runs, so a longer batch costs its trials no fresh
# results, while each engine task costs a round trip through the engine and a first trial that
# samples before it can start. Measured on 200 trials of 10 ms on Dask: ~15% less CPU per trial.
TRIAL_BATCH_SECONDS = 0.3
# Towards the end of a search, a task carries at most the remaining trials over this many tasks per
# slot (a map's batches use ``shoal.batching.BATCHES_PER_SLOT``, 4): tasks shrink as the end nears so
# every slot stays busy to the last, but each engine task costs its worker a pause that trials of one
# task do not (its first trial is sampled as it starts, its last told before it returns): measured on
# Dask, 8-15 ms between tasks against ~0.3 ms between trials of a task. 200 trials of 10 ms: 24
# tasks instead of 34, and +16% trials/s (median of 9 searches each, alternated, on a busy machine).
TAIL_TASKS_PER_SLOT = 2
# ... and over this many on an engine whose workers cannot sample a queued task's first trial early
# (a backend without ``prepares_queued``, such as Ray): there a task's first trial samples as it
# starts, ~40% of the pause between tasks (Ray: ~3 of 5-8 ms). 200 trials of 10 ms on Ray, with
# TAIL_MIN_SECONDS: 14 tasks instead of 21, +2.4% trials/s.
TAIL_TASKS_PER_SLOT_UNPREPARED = 1
# ... but a task of the tail carries at least this many seconds of trials: a task of one or two short
# trials costs its worker a pause about as long as its trials (between tasks: 4-8 ms on Dask, 5-11 ms
# on Ray), while a slot left idle at the very end waits at most this long (Dask: +1-2% trials/s).
TAIL_MIN_SECONDS = 0.04


class SearchCancelled(Exception):
    """The search's stop event was set (its pipeline step was cancelled): it ends ``cancelled``."""


@dataclass
class _InFlight:
    trial: Any
    handle: RunHandle
    task: int  # the engine task (a batch, or the trial alone) it travels in


class Loop:
    """One search's ask/launch/tell loop, from its first ask to its parent run's end."""

    def __init__(
        self, search: Search, staged: dict, parallelism: int, progress: Callable | None, parent: dict | None = None
    ):
        from optuna.trial import TrialState

        self.s = search
        self.staged = staged
        self.parent_record = parent  # a pipeline step's run record, to be the parent run
        self.study = search.study
        self.storage = search.storage
        self.parallelism = parallelism if search.n_trials is None else max(1, min(parallelism, search.n_trials))
        self.on_progress = progress
        # One trial queued in the engine behind each running one: a freed worker starts the next trial
        # at once instead of waiting for the driver to tell, create and submit it. Trials are sampled
        # where they start (TrialScope), so a queued trial sees every result told before it starts.
        # Only when the engine's slots are what bounds the parallelism (queued runs must not run
        # beside the others), and only up to one per slot counting those a larger parallelism queues.
        backend = search.driver.backend
        slots = backend.slots
        queueable = not backend.in_process and self.parallelism >= slots
        self.prefetch = max(0, 2 * slots - self.parallelism) if queueable else 0
        self.slots = max(1, slots)
        self.batching = backend.batches and not backend.in_process
        self.tail_tasks = TAIL_TASKS_PER_SLOT if backend.prepares_queued else TAIL_TASKS_PER_SLOT_UNPREPARED
        self.told_on_workers = search.tell_where_run and not backend.in_process
        self.asker = Asker(self.study, self.storage, one_write=search.tell_where_run)
        self.durations: collections.deque[float] = collections.deque(maxlen=max(4, 2 * self.slots))
        self.tasks: dict[int, int] = {}  # engine task -> its trials in flight
        self.launched = 0
        self.inflight: dict[str, _InFlight] = {}
        self.dropped: set[str] = set()  # runs the early stop cancelled while pending (see _drop_queued)
        self.finished: queue.SimpleQueue = queue.SimpleQueue()
        self.stopped: str | None = None
        self.owner = owner()
        trials = self.study.get_trials(deepcopy=False)
        # Failed trials use up no budget of a later search: a rerun after fixing the handler runs
        # n_trials again instead of nothing (this search's own failures do count, below).
        done = sum(1 for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED))
        others = sum(1 for t in trials if t.state == TrialState.RUNNING)
        self.budget = None if search.n_trials is None else max(0, search.n_trials - done - others)
        self.asked = 0
        self.failures = 0
        self.first_failure: tuple[int | None, str] | None = None  # (trial number, message)
        self.deadline = None if search.timeout is None else time.monotonic() + search.timeout
        self.progress = Progress(search.study_name, search.n_trials, done=done)
        self._update_best()
        self.next_beat = 0.0

    # -- the loop -------------------------------------------------------------------------------
    def run(self) -> TuneResult:
        self.parent = ParentRun(self.s, self.staged, record=self.parent_record)
        # Which parent run is this driver's: a resume after its death mends that run's children.
        self.study.set_user_attr(self.s.driver_key, {**self.owner, "active": True, "parent": self.parent.uid})
        try:
            with compat.optimize_loop(self.study):
                while True:
                    if self.s.stop is not None and self.s.stop.is_set():
                        raise SearchCancelled(f"search of study {self.s.study_name!r} was cancelled")
                    while self._may_ask():
                        self._launch()
                    if not self.inflight:
                        break
                    try:
                        handle = self.finished.get(timeout=self._wait())
                    except queue.Empty:
                        self._beat()
                        continue
                    self._tell(handle)
                    while True:  # tell every run that ended meanwhile before asking again
                        try:
                            self._tell(self.finished.get_nowait())
                        except queue.Empty:
                            break
                    if self.stopped is not None:
                        self._drop_queued()
                    self._beat()  # throttled: busy searches keep their heartbeats too
        except (KeyboardInterrupt, SearchCancelled):
            self._abort("cancelled", None)
            raise
        except BaseException as exc:
            self._abort("failed", exc)
            raise
        if self.stopped is None:
            self.stopped = "n_trials" if not compat.stop_requested(self.study) else "grid"
        result = TuneResult(self.study, self.s.project, parent=self.parent.uid, stopped=self.stopped)
        if self.progress.failed and not (self.progress.completed or self.progress.pruned):
            error = SearchFailedError(self._all_failed_message(), result)
            self._write_parent("failed", error_dict(type(error).__name__, str(error)))
            raise error
        self._finish_parent()
        return result

    def _all_failed_message(self) -> str:
        number, message = self.first_failure or (None, getattr(self, "last_error", ""))
        stop = f" (stopped by max_failures={self.s.max_failures})" if self.stopped == "max_failures" else ""
        failed = self.progress.failed
        return (
            f"{'all ' if failed > 1 else ''}{failed} trial{'s' if failed > 1 else ''} of study {self.s.study_name!r} "
            f"failed, none completed{stop}; first failure (trial {number}): {message} (parent run {self.parent.uid})"
        )

    def _drop_queued(self) -> None:
        """The search stops early: runs queued in the engine that have not started are cancelled
        (their trials go back to waiting, see _tell); running ones finish. A run that starts on
        its worker just as it is cancelled is cut short by the search, not failed by its trial: its
        trial goes back to waiting too."""
        for item in list(self.inflight.values()):
            if item.handle.state == "pending":
                self.dropped.add(item.handle.uid)
                item.handle.cancel()

    def _release(self, trial: Any) -> None:
        """Give a trial that never ran back to the study's queue (WAITING): the next search on the
        study runs it, and it counts for no one's n_trials meanwhile."""
        from optuna.trial import TrialState

        with contextlib.suppress(Exception):
            self.storage.set_trial_state_values(compat.trial_id(trial), state=TrialState.WAITING)

    def _may_ask(self) -> bool:
        if self.stopped is not None or len(self.tasks) >= self.parallelism + self.prefetch:
            return False
        if compat.stop_requested(self.study):
            self.stopped = "grid"
            return False
        if self.budget is not None and self.asked >= self.budget:
            return False
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self.stopped = "timeout"
            return False
        return True

    def _wait(self) -> float:
        wait = storages.HEARTBEAT_INTERVAL if self.s.heartbeat else 1.0
        if self.deadline is not None:
            wait = min(wait, max(0.05, self.deadline - time.monotonic()))
        return wait

    def _beat(self) -> None:
        """Heartbeats of our running trials, and failing other drivers' stale ones (RDB storages)."""
        if not self.s.heartbeat or time.monotonic() < self.next_beat:
            return
        self.next_beat = time.monotonic() + storages.HEARTBEAT_INTERVAL / 2
        for item in self.inflight.values():
            self.storage.record_heartbeat(compat.trial_id(item.trial))
        import optuna

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(self.study)

    # -- one engine task: a trial, or a batch of short ones ----------------------------------------
    def _batch_size(self) -> int:
        """Trials for the next engine task: one until every slot's first trial has shown how long
        a trial takes; then, for trials short enough that ``shoal.batching`` would batch them,
        about ``TRIAL_BATCH_SECONDS`` of them, fewer towards the end so every slot stays busy."""
        size = 1
        if self.batching and len(self.durations) >= self.slots:
            durations = list(self.durations)
            remaining = self.budget - self.asked if self.budget is not None else None
            if batching.batch_size(durations, None, self.slots) > 1:  # short enough to batch at all
                typical = max(sum(durations) / len(durations), 1e-5)
                size = min(int(TRIAL_BATCH_SECONDS / typical), batching.MAX_RUNS_PER_TASK)
                if remaining is not None:
                    share = math.ceil(remaining / (self.slots * self.tail_tasks))
                    size = min(size, max(share, int(TAIL_MIN_SECONDS / typical)))
        if self.budget is not None:
            size = min(size, self.budget - self.asked)
        return max(1, size)

    def _launch(self) -> None:
        s = self.s
        self.asker.refresh()
        records, trials = self._new_trials(self._batch_size())
        scopes = [self._scope(trial) for trial in trials]
        for scope in scopes[:-1]:  # a later trial of this task follows: its tell may queue (TrialScope)
            scope.followed = True
        s.project.store.create_runs(records)
        bound = dict(s.space.constants)  # the records get the sampled values when the runs end
        handles = s.driver.launch_many(
            records, self.staged, [bound] * len(records), scopes=scopes, batch_size=len(records)
        )
        task = self.launched
        self.launched += 1
        self.tasks[task] = len(handles)
        for trial, handle in zip(trials, handles):
            self.inflight[handle.uid] = _InFlight(trial, handle, task)
            handle.add_done_callback(self.finished.put)
        self.progress.running = min(len(self.inflight), self.parallelism)
        self._report()

    def _new_trials(self, count: int) -> tuple[list[dict[str, Any]], list[Any]]:
        """Ask up to ``count`` trials (fewer if the study stops meanwhile) and prepare their run
        records; sampled where they run (see TrialScope)."""
        s = self.s
        records = [
            s.driver.new_record(
                dict(s.space.constants), self.staged, parent=self.parent.uid, labels={"study": s.study_name}
            )
            for _ in range(count)
        ]
        # Trials are born linked to their runs: a driver killed from here on leaves enough to mend both.
        links = [{"run": record["uid"], "parent": self.parent.uid, "driver": self.owner} for record in records]
        trials = self.asker.ask_many(links)
        del records[len(trials) :]
        for record, trial in zip(records, trials):
            record["iteration"] = trial.number
            if s.heartbeat:
                self.storage.record_heartbeat(compat.trial_id(trial))
        self.asked += len(trials)
        return records, trials

    def _scope(self, trial: Any) -> TrialScope:
        """What the trial's run needs on its worker to sample, report and tell (TrialScope)."""
        s = self.s
        return TrialScope(
            storage=s.ref,
            study_name=s.study_name,
            trial_id=compat.trial_id(trial),
            objective=s.objective,
            distributions=s.distributions,
            sampler=s.trial_sampler(trial.number),
            pruner=self.study.pruner,
            tell=self.told_on_workers,
            study=self.study if s.driver.backend.in_process else None,
        )

    def _tell(self, handle: RunHandle) -> None:
        from optuna.trial import TrialState

        item = self.inflight.pop(handle.uid, None)
        if item is None:
            return
        self.tasks[item.task] -= 1
        if not self.tasks[item.task]:
            del self.tasks[item.task]
        run = handle.result(0)
        trial = item.trial
        if run.state in ("completed", "pruned") and run.started_at is not None and run.ended_at is not None:
            self.durations.append((run.ended_at - run.started_at).total_seconds())
        if run.state == "cancelled" and (run.started_at is None or run.uid in self.dropped):  # queued, then dropped
            self._release(trial)
            self.progress.running = min(len(self.inflight), self.parallelism)
            self._report()
            return
        if run.state == "pruned":
            self._told(trial, state=TrialState.PRUNED)
            self.progress.pruned += 1
        elif run.state == "completed":
            try:
                values = self.s.objective.values(run.results)
            except Exception as exc:  # noqa: BLE001 - a non-numeric objective: that trial fails
                self._fail_trial(trial, str(exc), run_uid=run.uid)
            else:
                frozen = self._told(trial, values=values if self.s.objective.multi else values[0])
                if frozen is not None and frozen.state == TrialState.FAIL:  # NaN objective
                    self._count_failure(f"objective is not a number: {values}", trial.number)
                else:
                    self.progress.completed += 1
                    if self.s.stop_when is not None and self.s.stop_when.reached(run.results):
                        self.stopped = "stop_when"
        else:
            error = run.error or {}
            message = f"{error.get('type', run.state)}: {error.get('message', '')}".strip()
            self.storage.set_trial_user_attr(compat.trial_id(trial), "shoal_error", message)
            self._told(trial, state=TrialState.FAIL)
            self._count_failure(message, trial.number)
        self.progress.done += 1
        self.progress.running = min(len(self.inflight), self.parallelism)
        self._update_best()
        self._report()

    def _told(self, trial: Any, **kwargs: Any) -> Any:
        import optuna

        if self.told_on_workers:
            frozen = self.storage.get_trial(compat.trial_id(trial))
            if frozen.state.is_finished():  # told where it ran
                return frozen
        try:
            return self.study.tell(trial.number, **kwargs)  # an asked Trial, or the FrozenTrial of one
        except optuna.exceptions.UpdateFinishedTrialError:
            log.warning("study %s: trial %d was already finished (failed as stale?)", self.s.study_name, trial.number)
            return None

    def _fail_trial(self, trial: Any, message: str, run_uid: str | None = None) -> None:
        from optuna.trial import TrialState

        self.storage.set_trial_user_attr(compat.trial_id(trial), "shoal_error", message)
        self._told(trial, state=TrialState.FAIL)
        if run_uid is not None:
            records.fail_record(self.s.project, run_uid, "TuningError", message)
        self._count_failure(message, trial.number)
        if run_uid is None:  # never launched: count it here (_tell counts launched ones)
            self.progress.done += 1

    def _count_failure(self, message: str, number: int | None = None) -> None:
        if self.first_failure is None:
            self.first_failure = (number, message)
        self.failures += 1
        self.progress.failed += 1
        self.last_error = message
        if self.s.max_failures is not None and self.failures >= self.s.max_failures:
            self.stopped = "max_failures"

    def _update_best(self) -> None:
        """The best so far, for the progress callback only (a storage read: skipped without one)."""
        if self.s.objective.multi or self.on_progress is None:
            return
        try:
            best = self.study.best_trial
        except ValueError:
            return
        self.progress.best_value, self.progress.best_trial = best.value, best.number

    def _report(self) -> None:
        if self.on_progress is not None:
            self.on_progress(replace(self.progress))

    def _abort(self, state: str, exc: BaseException | None) -> None:
        """Cancel runs in flight, fail their trials, and finish the parent run as ``state``."""
        from optuna.trial import TrialState

        handles = [item.handle for item in self.inflight.values()]
        for handle in sorted(handles, key=lambda h: h.state == "running"):
            handle.cancel()
        for handle in handles:
            handle.wait(30)
        note = "search interrupted (Ctrl-C)" if state == "cancelled" else f"search failed: {exc}"
        for item in list(self.inflight.values()):
            run = item.handle.result(0) if item.handle.done() else None
            if run is not None and run.state == "cancelled" and run.started_at is None:
                self._release(item.trial)  # queued, never ran
                continue
            with contextlib.suppress(Exception):
                self.storage.set_trial_user_attr(compat.trial_id(item.trial), "shoal_error", note)
                self._told(item.trial, state=TrialState.FAIL)
        self.inflight.clear()
        error = error_dict("KeyboardInterrupt" if exc is None else type(exc).__name__, note)
        with contextlib.suppress(Exception):
            self._write_parent(state, error)

    def _finish_parent(self) -> None:
        state, error = "completed", None
        if self.stopped == "max_failures":
            state = "failed"
            error = error_dict(
                "TuningError",
                f"stopped after {self.failures} failed trials (max_failures={self.s.max_failures}); "
                f"last: {getattr(self, 'last_error', '')}",
            )
        self._write_parent(state, error)

    def _write_parent(self, state: str, error: dict[str, str] | None) -> None:
        counts = {
            "stopped": self.stopped or state,
            "completed": self.progress.completed,
            "pruned": self.progress.pruned,
            "failed": self.progress.failed,
        }
        self.parent.finish(state, error, counts, self.owner)
