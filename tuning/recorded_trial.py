"""The Optuna trial a tuning run's handler gets: an ``optuna.trial.Trial`` whose ``report`` is
also recorded with the run.

An objective written for Optuna calls ``trial.report(value, step)`` directly, never ``ctx.report``;
its learning curve must still land in the run's metrics. So every report the trial stores is also
appended to the run's metric ``objective`` at the same step. ``ctx.report`` goes through the same
method (it does not log the value itself inside tuning), so each value is recorded once, and the
series holds exactly the trial's intermediate values: a second report at a step that Optuna ignores
(with its warning) is not recorded either.

Imported only where a trial is built (it imports optuna; ``import shoal`` must not).
"""

from __future__ import annotations

import math
from typing import Any

import optuna

from shoal.context import finite_or_text

from ._optuna_compat import intermediate_values

#: the run's metric that holds a trial's reported values (the name ``ctx.report`` has always used)
METRIC = "objective"

_report = optuna.trial.Trial.report


class RecordedTrial(optuna.trial.Trial):
    """``optuna.trial.Trial`` whose reports are also logged to the run's context once it is bound
    (``bind``): a trial may be built ahead, before its run's context exists."""

    def __init__(self, study: Any, trial_id: int) -> None:
        super().__init__(study, trial_id)
        self._ctx: Any = None

    def bind(self, ctx: Any) -> RecordedTrial:
        """Record this trial's reports in ``ctx`` (a ``shoal.Context``) from now on."""
        self._ctx = ctx
        return self

    def report(self, value: float, step: int) -> None:
        # Appends to the series as ``Context.log_metric`` would, without its checks (the key is
        # fixed, Optuna checked value and step): a report costs Optuna's own and little more.
        known = intermediate_values(self)  # the dict report() updates in place
        count = len(known)
        _report(self, value, step)  # checks value and step, stores; ignores (and warns) a known step
        if len(known) > count and self._ctx is not None:
            step = int(step)
            value = known[step]
            self._ctx.metrics.setdefault(METRIC, []).append(
                [step, value if math.isfinite(value) else finite_or_text(value)]
            )
