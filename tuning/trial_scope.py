"""The worker side of a trial: ``ctx.trial``, ``ctx.report`` -> pruning, and the objective check.

A ``TrialScope`` travels inside the run's task (``RunTask.scope``) and is entered around the handler
wherever the run executes. It rebuilds the Optuna trial from the study storage (the storage and the
study object are cached per worker process), so the handler can suggest define-by-run parameters and
report intermediate values that the pruner sees. After the handler returns it checks that every
objective key was logged, so a missing key fails the run itself, with the keys that were logged.

In a batch of short trials, a trial's parameters are sampled while the trial before it runs
(``prepare``), as Optuna's own threads sample one trial while another's objective runs; and where the
engine shows the task queued behind a batch (Dask), the first trial of that task is sampled while the
batch's last one runs (``prepare_queued``: ~4 ms less at each task's start), its values held until
its run starts there. A trial's sampled parameters reach a journal storage in one append
(``params_held``), not one each: every append takes the journal's lock and an ``fsync`` that the
driver and the other workers wait for. A trial whose values were not written ahead (the first of a
task) hands that append to the telling thread and starts its handler at once; its tell queues
behind it, and its run waits for it before its outcome leaves (0.5-1.3 ms median per task on Dask).

A trial that completes (or is pruned) is told here, where it ran: the next trial sampled on any
worker sees its value at once, even while the driver is busy or the trial's run still travels
back in a batch. Failures are left to the driver, which may retry the run on the same trial.

In a batch, a trial's tell (a journal append: the lock and an ``fsync``) goes to a telling thread,
so the next trial starts at once instead of waiting for the write; the sampling of the trial
after next waits for it (it sees that value), and the batch's last trial waits for those queued
before its own tell, so every trial of a batch is told before its outcomes leave the worker.

Both background threads work under a short GIL switch interval (``gil_handoff``): a trial whose
handler wakes from its sleep or I/O waits for the GIL no longer than that, not CPython's 5 ms.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ._optuna_compat import forget_cached_trials, params_held
from .gil_handoff import yielding
from .objective import Objective
from .space import suggest
from .storage import StorageRef
from .strategies import NamedSampler

log = logging.getLogger("shoal.tuning")

_pools: dict[str, cf.ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()
_queued_tell: cf.Future | None = None  # the last tell queued on the telling thread
# Trials of tasks queued in this process, sampled ahead (prepare_queued): (storage, study, trial id) -> the future of
# (trial, parameters, their append still to make); bounded, as a queued task may run elsewhere.
_sampled_for_queued: dict[tuple[StorageRef, str, int], cf.Future] = {}
_queued_lock = threading.Lock()
MAX_SAMPLED_FOR_QUEUED = 16


def _thread(job: str) -> cf.ThreadPoolExecutor:
    """This process's one thread for ``job`` ("sampling" trials ahead, "telling" trials of a batch),
    each in order (a forked child starts its own)."""
    with _pools_lock:
        pool = _pools.get(job)
        if pool is None:
            pool = _pools[job] = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"shoal-trial-{job}")
        return pool


def _background(job: str, call: Callable[..., Any], *args: Any) -> cf.Future:
    """``call(*args)`` on this process's thread for ``job``, yielding the GIL promptly to the trial
    running meanwhile (``gil_handoff``)."""
    return _thread(job).submit(yielding(call), *args)


def _forget_pools_in_child() -> None:
    global _queued_tell
    _pools.clear()
    _sampled_for_queued.clear()
    _queued_tell = None


if hasattr(os, "register_at_fork"):  # not on Windows, which does not fork
    os.register_at_fork(after_in_child=_forget_pools_in_child)


@dataclass
class TrialScope:
    """What a worker needs to attach one run to its Optuna trial (picklable)."""

    storage: StorageRef
    study_name: str
    trial_id: int
    objective: Objective
    #: the space this trial samples where it runs (parameter -> Optuna distribution)
    distributions: dict[str, Any] = field(default_factory=dict)
    #: the sampler for define-by-run suggestions: a NamedSampler, or the user's sampler object
    sampler: Any = None
    pruner: Any = None
    #: tell a completed or pruned trial here (samplers whose after_trial the driver need not see)
    tell: bool = False
    #: a later trial of the same engine task runs after this one: its tell may be queued
    followed: bool = False
    #: in-process runs use the driver's own study (never pickled)
    study: Any = field(default=None, repr=False, compare=False)
    #: parameters sampled ahead of the run (prepare), on the worker only
    _ahead: Any = field(default=None, init=False, repr=False, compare=False)
    #: the append of this trial's parameters, queued on the telling thread (_sample), on the worker only
    _written: Any = field(default=None, init=False, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["study"] = state["_ahead"] = state["_written"] = None
        return state

    def prepare(self) -> None:
        """Start sampling this trial's parameters now, on this process's sampling thread (returns
        at once: a new thread per trial would make the caller wait for it to start)."""
        if self.distributions and self._ahead is None:
            self._ahead = _background("sampling", self._sample, _queued_tell)

    def prepare_queued(self) -> None:
        """This trial's run is the first of an engine task queued in this process behind the one
        running: sample its parameters now, as ``prepare`` does for the next trial of a batch, but
        write them only once the run starts here (the engine may still move a queued task to
        another worker, which then samples the trial itself: no trial gets two sets of values)."""
        if not self.distributions or not self.tell or self.study is not None:
            return
        with _queued_lock:
            if self._key in _sampled_for_queued:
                return
            while len(_sampled_for_queued) >= MAX_SAMPLED_FOR_QUEUED:  # tasks that went elsewhere
                del _sampled_for_queued[next(iter(_sampled_for_queued))]
            _sampled_for_queued[self._key] = _background("sampling", self._sample_held, _queued_tell, True)

    @property
    def _key(self) -> tuple[StorageRef, str, int]:
        """This trial among every storage's (trial ids are a storage's own)."""
        return self.storage, self.study_name, self.trial_id

    def _sample(self, after: cf.Future | None = None, defer: bool = False) -> tuple[Any, dict[str, Any]]:
        """Sample this trial's parameters, once the tell queued before (``after``) is written: the
        trial after next sees the value of the one before it. Their one journal append is made
        here, or with ``defer`` queued on the telling thread (``_written``)."""
        trial, params, held = self._sample_held(after)
        self._write(held, defer)
        return trial, params

    def _sample_held(self, after: cf.Future | None = None, queued: bool = False) -> tuple[Any, dict[str, Any], Any]:
        """The trial, its parameters and their append still to make (None: already written, a
        storage other than a journal). What was suggested before a failure is written, unless
        the trial is ``queued`` (it may run elsewhere)."""
        study = self._study()  # built while the tell before is written: sampling is what must see it
        if after is not None:
            after.result()
        from .recorded_trial import RecordedTrial

        trial = RecordedTrial(study, self.trial_id)
        with params_held(trial) as held:
            try:
                params = {name: suggest(trial, name, dist) for name, dist in self.distributions.items()}
            except BaseException:
                if held is not None and not queued:
                    held.write()
                raise
        return trial, params, held

    def _write(self, held: Any, defer: bool) -> None:
        """Append the held parameters now, or queued on the telling thread (``defer``)."""
        global _queued_tell
        if held is not None and defer:
            self._written = _queued_tell = _background("telling", held.write)
        elif held is not None:
            held.write()

    def __call__(self, ctx: Any) -> Any:
        return self._scope(ctx)

    def _trial(self) -> Any:
        """This trial, rebuilt from the storage (only handlers that use it, or sampling, pay for it):
        an ``optuna.trial.Trial`` whose reports the run records once bound to its context."""
        from .recorded_trial import RecordedTrial

        return RecordedTrial(self._study(), self.trial_id)

    def _study(self) -> Any:
        """The study as this trial sees it: the process's storage, this trial's own sampler."""
        if self.study is not None:  # the driver's own, whose trials are told on the driver's thread
            forget_cached_trials(self.study)
            return self.study
        import optuna

        storage = self.storage.open()  # cached per process by StorageRef
        sampler = self.sampler
        if isinstance(sampler, NamedSampler):  # a study's own: one deleted and made again is another
            sampler = sampler.build((self.storage, storage.get_study_id_from_name(self.study_name)))
        elif sampler is not None:
            sampler.reseed_rng()  # the user's object: every copy would otherwise draw the same numbers
        return optuna.Study(study_name=self.study_name, storage=storage, sampler=sampler, pruner=self.pruner)

    @contextmanager
    def _scope(self, ctx: Any) -> Iterator[None]:
        import optuna

        from .recorded_trial import METRIC, RecordedTrial

        def report(value: float, step: int | None) -> None:
            # Context.report always gives the step; the trial records the value in ctx's metrics
            trial = ctx.trial
            trial.report(value, step)
            if not isinstance(trial, RecordedTrial):  # a trial the handler put there itself
                ctx.log_metric(METRIC, value, step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"trial {trial.number} pruned at step {step} (value {float(value):g})")

        ctx.attach_trial(lambda: self._trial().bind(ctx), report)
        if self.distributions:
            trial, params = self._sampled()
            ctx.trial = trial.bind(ctx)
            ctx.set_params(params)
        try:
            yield
        except optuna.TrialPruned:
            _record_suggested(ctx)
            self._tell(ctx, state=optuna.trial.TrialState.PRUNED)
            raise
        except BaseException:
            _record_suggested(ctx)
            raise
        finally:
            if self._written is not None:  # the parameters are in the storage before the outcome leaves
                self._written.result()
        _record_suggested(ctx)
        error = self.objective.missing(ctx.results)
        if error is not None:
            raise error
        try:
            values = self.objective.values(ctx.results)
        except Exception:  # noqa: BLE001 - not a number: the driver fails the trial, naming the value
            return
        self._tell(ctx, values=values if self.objective.multi else values[0])

    def _sampled(self) -> tuple[Any, dict[str, Any]]:
        """The parameters sampled ahead (``prepare`` or ``prepare_queued``), else sampled now;
        their append deferred when this trial is told here, behind it."""
        defer = self.tell and self.study is None
        with _queued_lock:
            queued = _sampled_for_queued.pop(self._key, None)
        if queued is not None:
            try:
                trial, params, held = queued.result()
            except Exception as exc:  # noqa: BLE001 - sampled nothing it wrote: sample here
                log.debug("trial %d: sampling for its queued task failed (%s); sampling now", self.trial_id, exc)
            else:
                self._write(held, defer)
                return trial, params
        if self._ahead is not None:
            try:
                return self._ahead.result()
            except Exception as exc:  # noqa: BLE001 - e.g. storage hiccup in the helper: try again here
                log.debug("trial %d: sampling ahead failed (%s); sampling now", self.trial_id, exc)
        return self._sample(defer=defer)

    def _tell(self, ctx: Any, **outcome: Any) -> None:
        """Tell the trial: queued on the sampling thread when a trial of the same task follows,
        else now, once the tells queued before it are written."""
        global _queued_tell
        if not self.tell:
            return
        if self.followed:
            _queued_tell = _background("telling", _tell_trial, ctx.trial, outcome)
            return
        queued = _queued_tell
        if queued is not None:
            queued.result()
        _tell_trial(ctx.trial, outcome)


def _tell_trial(trial: Any, outcome: dict[str, Any]) -> None:
    try:
        trial.study.tell(trial, **outcome)
    except Exception as exc:  # noqa: BLE001 - the run's result stands; the driver tells the trial
        log.warning("trial %d could not be told where it ran (%s); the driver tells it", trial.number, exc)


def _record_suggested(ctx: Any) -> None:
    """Parameters the handler suggested through its trial (define-by-run) go into its run's record,
    beside those sampled from the space: every trial's run records what it ran with."""
    trial = ctx.built_trial  # only a trial the handler (or sampling) built: never built here
    suggested = getattr(trial, "params", None) if trial is not None else None
    if suggested and any(ctx.params.get(name, _UNSET) != value for name, value in suggested.items()):
        ctx.set_params(suggested)


_UNSET = object()
