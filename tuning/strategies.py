"""Strategy names -> Optuna samplers, pruner names -> Optuna pruners.

Names are checked before anything runs; Optuna sampler and pruner objects pass through unchanged.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

from shoal.errors import TuningError

from .space import Space

STRATEGIES = ("tpe", "random", "grid", "list", "cmaes", "nsga2")
PRUNERS = ("median", "hyperband", "successive-halving", "none")


@dataclass
class Plan:
    """The sampler, and for grid/list the fixed assignments the search runs through."""

    sampler: Any
    name: str
    #: list strategy: the assignments to enqueue, in order (the i-th value of every list together)
    queue: list[dict[str, Any]] = field(default_factory=list)
    #: grid/list: how many trials cover the whole grid (default n_trials)
    size: int | None = None


@dataclass(frozen=True)
class NamedSampler:
    """A named strategy's sampler, described rather than pickled: a worker builds it only if the
    handler suggests define-by-run parameters (a pickled TPE sampler is 11 KB and costs ~1.5 ms a
    trial to ship). Seeded from the search's seed and the trial number, so copies on different
    workers never draw the same numbers."""

    strategy: str
    space: Space
    seed: int | None
    multi: bool

    def build(self, study: Hashable) -> Any:
        """The sampler for a trial of ``study`` (any key naming one study, e.g. storage and study
        id); a TPE or random one is this thread's from an earlier trial of the same study,
        reseeded to what a new one would be (``_optuna_compat.reseed``), or without a seed, as it
        is. Only within one study: a TPE sampler keeps what it learnt of the study's search space."""
        from . import _optuna_compat as compat

        key = (self.strategy, self.multi, study)
        built = getattr(_reused, "samplers", None)
        if built is None:
            built = _reused.samplers = {}
        kept = built.get(key)
        if kept is not None:
            if self.seed is not None:
                compat.reseed(kept, self.seed)
            return kept
        fresh = sampler(self.strategy, self.space, seed=self.seed, multi=self.multi).sampler
        if compat.reusable(fresh):
            while len(built) >= MAX_REUSED:  # the oldest study's: a worker serves one search at a time, mostly
                del built[next(iter(built))]
            built[key] = fresh
        return fresh


#: Per thread: samplers of named strategies reused across a study's trials (``NamedSampler.build``);
#: a thread's own, as a sampler is not safe to use from two threads at once.
_reused = threading.local()
#: studies whose samplers a thread keeps
MAX_REUSED = 4


def check_strategy(strategy: Any) -> None:
    if isinstance(strategy, str):
        if strategy.lower() not in STRATEGIES:
            raise TuningError(f"unknown strategy {strategy!r}; use one of {', '.join(STRATEGIES)} or an Optuna sampler")
        return
    if not _is_optuna(strategy, "samplers"):
        raise TuningError(f"strategy must be a name ({', '.join(STRATEGIES)}) or an Optuna sampler, got {strategy!r}")


def sampler(strategy: Any, space: Space, *, seed: int | None, multi: bool) -> Plan:
    """The Optuna sampler for ``strategy`` over ``space`` (TuningError/SpaceError if it cannot be)."""
    import optuna

    check_strategy(strategy)
    if not isinstance(strategy, str):
        return Plan(strategy, type(strategy).__name__)
    name = strategy.lower()
    samplers = optuna.samplers
    if name == "tpe":
        # Optuna's TPE as Optuna's own default: since Optuna 5 that is the multivariate TPE with the
        # constant liar for one objective (a trial being evaluated elsewhere counts as a poor one).
        # Pinning the independent TPE lost to plain Optuna on the same search (over 96 seeds: median
        # best 0.002 worse, 21 searches ending below -0.41 against 2).
        return Plan(samplers.TPESampler(seed=seed), name)
    if name == "random":
        return Plan(samplers.RandomSampler(seed=seed), name)
    if name == "nsga2":
        return Plan(samplers.NSGAIISampler(seed=seed), name)
    if name == "cmaes":
        try:
            import cmaes  # noqa: F401 - Optuna's CMA-ES sampler needs it
        except ImportError:
            raise TuningError(
                "the cmaes strategy needs the cmaes package: pip install cmaes (or 'shoal[tuning]')"
            ) from None
        if multi:
            raise TuningError("the cmaes strategy optimises one objective; use nsga2 for several")
        return Plan(samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False), name)
    grid = space.grid(name)
    if not grid:
        raise TuningError(f"the {name!r} strategy needs at least one list (or stepped) parameter in the space")
    if name == "grid":
        size = 1
        for values in grid.values():
            size *= len(values)
        return Plan(samplers.GridSampler(grid, seed=seed), name, size=size)
    # list: the i-th value of every list together; all lists must be as long
    lengths = {key: len(values) for key, values in grid.items()}
    if len(set(lengths.values())) != 1:
        shown = ", ".join(f"{k}: {n}" for k, n in lengths.items())
        raise TuningError(
            f"the 'list' strategy needs lists of the same length ({shown}); use 'grid' for all combinations"
        )
    queue = [dict(zip(grid, values)) for values in zip(*grid.values())]
    return Plan(samplers.RandomSampler(seed=seed), name, queue=queue, size=len(queue))


def pruner(value: Any, *, multi: bool = False) -> Any:
    """The Optuna pruner for a name ("none": never prune) or the pruner object itself. None is
    Optuna's default, as ``optuna.create_study`` has it: ``MedianPruner()`` (a multi-objective
    study cannot prune, so nothing there)."""
    import optuna

    if value is None:
        return optuna.pruners.NopPruner() if multi else optuna.pruners.MedianPruner()
    if isinstance(value, str):
        name = value.lower().replace("_", "-")
        if name == "median":
            return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
        if name == "hyperband":
            return optuna.pruners.HyperbandPruner()
        if name in ("successive-halving", "successivehalving", "sha"):
            return optuna.pruners.SuccessiveHalvingPruner()
        if name in ("none", "nop"):
            return optuna.pruners.NopPruner()
        raise TuningError(f"unknown pruner {value!r}; use one of {', '.join(PRUNERS)} or an Optuna pruner")
    if not _is_optuna(value, "pruners"):
        raise TuningError(f"pruner must be a name ({', '.join(PRUNERS)}), None or an Optuna pruner, got {value!r}")
    return value


def check_pruner(value: Any) -> None:
    if isinstance(value, str) and value.lower().replace("_", "-") not in PRUNERS + ("successivehalving", "sha", "nop"):
        raise TuningError(f"unknown pruner {value!r}; use one of {', '.join(PRUNERS)} or an Optuna pruner")


def _is_optuna(value: Any, kind: str) -> bool:
    import optuna

    base = optuna.samplers.BaseSampler if kind == "samplers" else optuna.pruners.BasePruner
    return isinstance(value, base)


def combinations(grid: dict[str, list]) -> list[dict[str, Any]]:
    """Every assignment of a grid (for tests and messages)."""
    return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
