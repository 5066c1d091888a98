"""The worker side of a trial: ``ctx.trial``, ``ctx.report`` -> pruning, and the objective check.

A ``TrialScope`` travels inside the run's task (``RunTask.scope``) and is entered around the handler
wherever the run executes. It rebuilds the Optuna trial from the study storage (the storage and the
study object are cached per worker process), so the handler can suggest define-by-run parameters and
report intermediate values that the pruner sees. After the handler returns it checks that every
objective key was logged, so a missing key fails the run itself, with the keys that were logged.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

from .objective import Objective
from .space import suggest
from .strategies import NamedSampler
from .storage import StorageRef


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
    #: in-process runs use the driver's own study (never pickled)
    study: Any = field(default=None, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["study"] = None
        return state

    def __call__(self, ctx: Any) -> Any:
        return self._scope(ctx)

    def _study(self) -> Any:
        """The study as this trial sees it: the process's storage, this trial's own sampler."""
        if self.study is not None:
            return self.study
        import optuna

        storage = self.storage.open()  # cached per process by StorageRef
        sampler = self.sampler
        if isinstance(sampler, NamedSampler):
            sampler = sampler.build()
        elif sampler is not None:
            sampler.reseed_rng()  # the user's object: every copy would otherwise draw the same numbers
        return optuna.Study(study_name=self.study_name, storage=storage, sampler=sampler, pruner=self.pruner)

    @contextmanager
    def _scope(self, ctx: Any) -> Iterator[None]:
        import optuna

        def report(value: float, step: int | None) -> None:
            if step is None:  # Context.report logged it as the next step of the "objective" metric
                step = int(ctx.metrics["objective"][-1][0])
            trial = ctx.trial
            trial.report(value, step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"trial {trial.number} pruned at step {step} (value {value:g})")

        # Rebuilding the trial reads the study from storage: only handlers that use it pay for it.
        ctx._trial_factory = lambda: optuna.trial.Trial(self._study(), self.trial_id)
        ctx._reporter = report
        if self.distributions:
            trial = ctx.trial
            ctx.set_params({name: suggest(trial, name, dist) for name, dist in self.distributions.items()})
        yield
        error = self.objective.missing(ctx.results)
        if error is not None:
            raise error
