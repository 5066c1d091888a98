"""tune()'s arguments, checked before anything runs or is recorded: the search's settings.

Every problem is a ``TuningError`` naming the option and the fix; the checks need no storage,
backend or project, so a mistake costs nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shoal.errors import TuningError

from . import strategies, wording
from .objective import OPTUNA_RESULTS, RETURN_RESULTS, Objective, StopWhen
from .space import Space

if TYPE_CHECKING:  # pragma: no cover
    from shoal.function import Function


def int_option(value: Any, name: str, minimum: int) -> int | None:
    """``value`` as a whole number >= ``minimum`` (None stays None)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise TuningError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    return value


def timeout_option(value: Any) -> float | None:
    """``timeout`` as seconds > 0 (None stays None)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise TuningError(f"timeout must be a number of seconds > 0, got {value!r}")
    return float(value)


def objective_option(fn: Function, objective: Any, direction: Any, directions: Any) -> Objective:
    """The search's objective from ``objective=`` or ``direction``/``directions`` (never both)."""
    if direction is not None and directions is not None:
        raise TuningError(
            f"give {wording.option('direction')} (one objective) or {wording.option('directions')} (several), not both"
        )
    if isinstance(directions, str):
        raise TuningError(
            f"directions must be a list, e.g. directions=['minimize', 'maximize']; for one objective give direction={directions!r}"
        )
    asked = [direction] if direction is not None else directions
    if objective is not None:
        if asked is not None:
            raise TuningError(
                f"objective={objective!r} already names the results and their direction; drop "
                f"{wording.option('direction' if direction is not None else 'directions')} (or drop "
                f"{wording.option('objective')} to optimise the value the handler returns)"
            )
        return Objective.parse(objective)
    trial_form = takes_trial(fn)
    if asked is None:
        if not trial_form:
            return Objective.parse("max.accuracy")  # handlers that log named results
        asked = ["minimize"]  # Optuna's default direction
    return Objective.returned_value(list(asked), OPTUNA_RESULTS if trial_form else RETURN_RESULTS)


def takes_trial(fn: Function) -> bool:
    """Whether ``fn`` is an Optuna objective (its first parameter takes a trial)."""
    from shoal.errors import CodeError
    from shoal.params import signature_of

    try:
        handler = fn.callable
    except CodeError as exc:
        if isinstance(exc.__cause__, ImportError):  # a package only the workers have
            return False
        raise
    return signature_of(handler).trial_param is not None


class Settings:
    """One tune() call's checked settings: what to search, how, and when to stop."""

    def __init__(
        self,
        fn: Function,
        space: Space,
        objective: Objective,
        *,
        n_trials: int | None,
        timeout: float | None,
        strategy: Any,
        pruner: Any,
        parallelism: int | None,
        stop_when: StopWhen | None,
        max_failures: int | None,
        seed: int | None,
        study: str | None,
    ):
        strategies.check_strategy(strategy)
        strategies.check_pruner(pruner)
        if study is not None and (not isinstance(study, str) or not study.strip()):
            raise TuningError(f"study must be a non-empty name, got {study!r}")
        self.fn = fn
        self.space = space
        self.objective = objective
        self.plan = strategies.sampler(strategy, space, seed=seed, multi=objective.multi)
        self.pruner = strategies.pruner(pruner, multi=objective.multi)
        self.pruner_option = pruner  # as given (a name, None, or an Optuna pruner)
        if objective.multi and pruner is not None and not isinstance(self.pruner, _nop()):
            raise TuningError(
                f"pruning works with one objective only; drop {wording.option('pruner')} for a multi-objective search"
            )
        if n_trials is None:
            n_trials = self.plan.size
        if n_trials is None and timeout is None:
            raise TuningError(
                f"give {wording.option('n_trials')} (or {wording.option('timeout')}) to bound the search, "
                f"e.g. {wording.option('n_trials', 50)}"
            )
        self.n_trials = n_trials
        self.timeout = timeout
        self.parallelism = parallelism
        self.stop_when = stop_when
        self.max_failures = max_failures
        self.study_name = (study or fn.name).strip()
        self.distributions = space.distributions()
        self.strategy = strategy
        self.seed = seed
        # Named samplers other than grid keep no state the driver's copy must see in after_trial
        # (GridSampler stops the study there), so their trials can be told where they run.
        self.tell_where_run = isinstance(strategy, str) and strategy.lower() != "grid"

    def trial_sampler(self, number: int) -> Any:
        """What a worker samples trial ``number``'s define-by-run parameters with: a description
        of a named strategy's sampler (seeded from the search's seed and the number), else the
        user's sampler object."""
        if not isinstance(self.strategy, str):
            return self.plan.sampler
        seed = None if self.seed is None else (self.seed * 1_000_003 + number) % 2**32
        return strategies.NamedSampler(self.strategy, self.space, seed, self.objective.multi)


def _nop() -> type:
    import optuna

    return optuna.pruners.NopPruner
