"""Objective selectors (``"max.accuracy"``, ``"min.loss"``) or the returned value (Optuna's
``direction=``), and stop targets (``"accuracy>=0.95"``).

Both are parsed before a search starts, so a typo is an error at once rather than a failed search.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from shoal.errors import ObjectiveMissingError, TuningError

_SELECTOR = re.compile(r"^(max|min)\.(.+)$")
_DIRECTIONS = {"max": "maximize", "min": "minimize"}

#: where the value an Optuna objective (``def objective(trial)``) returns is recorded: one value,
#: or a tuple/list of them for several objectives (see ``shoal.execution``)
OPTUNA_RESULTS = ("value", "values")
#: where any other handler's returned value is recorded
RETURN_RESULTS = ("return", "return")


@dataclass(frozen=True)
class Objective:
    """One or more result keys, each maximised or minimised; or, with ``returned``, the value the
    handler returns (Optuna's form: ``direction=``/``directions=`` and a returned float or tuple)."""

    keys: tuple[str, ...]
    directions: tuple[str, ...]  # "maximize" / "minimize", as Optuna names them
    #: the result keys the returned value is recorded under (one value, several values), or None
    #: when ``keys`` name the objective
    returned: tuple[str, str] | None = None

    @classmethod
    def parse(cls, objective: str | Sequence[str]) -> Objective:
        selectors = [objective] if isinstance(objective, str) else list(objective or ())
        if not selectors:
            raise TuningError(
                "objective is empty; give e.g. objective='max.accuracy' or ['max.accuracy', 'min.latency']"
            )
        keys, directions = [], []
        for selector in selectors:
            match = _SELECTOR.match(selector.strip()) if isinstance(selector, str) else None
            if match is None or not match.group(2).strip():
                raise TuningError(
                    f"objective {selector!r} is not a selector; write max.KEY or min.KEY (e.g. 'max.accuracy')"
                )
            key = match.group(2).strip()
            if key in keys:
                raise TuningError(f"objective key {key!r} is given twice")
            keys.append(key)
            directions.append(_DIRECTIONS[match.group(1)])
        return cls(tuple(keys), tuple(directions))

    @classmethod
    def returned_value(cls, directions: Sequence[Any], results: tuple[str, str] = OPTUNA_RESULTS) -> Objective:
        """The handler's returned value, optimised in ``directions`` (Optuna's names or
        ``StudyDirection`` members), recorded under ``results``."""
        named = tuple(direction_name(d) for d in directions)
        if not named:
            raise TuningError("directions is empty; give e.g. directions=['minimize', 'maximize']")
        one, many = results
        keys = (one,) if len(named) == 1 else tuple(f"{many}[{i}]" for i in range(len(named)))
        return cls(keys, named, returned=results)

    @property
    def multi(self) -> bool:
        return len(self.directions) > 1

    def selectors(self) -> list[str]:
        return [f"{'max' if d == 'maximize' else 'min'}.{k}" for k, d in zip(self.keys, self.directions)]

    def missing(self, results: Mapping[str, Any]) -> ObjectiveMissingError | None:
        """The error for a run that did not log every objective key, else None."""
        logged = ", ".join(sorted(results)) or "none"
        if self.returned is not None:
            if any(key in results for key in self.returned):
                return None
            return ObjectiveMissingError(
                f"the objective returned no value (results logged: {logged}); return the objective value "
                f"({'a tuple of ' + str(len(self.directions)) + ' numbers' if self.multi else 'a number'}), "
                f"or name a result with objective='max.KEY'"
            )
        absent = [key for key in self.keys if key not in results]
        if not absent:
            return None
        which = "key" if len(absent) == 1 else "keys"
        return ObjectiveMissingError(
            f"the objective {which} {', '.join(repr(k) for k in absent)} never logged; "
            f"keys logged: {logged} (return or ctx.log_result the objective)"
        )

    def values(self, results: Mapping[str, Any]) -> list[float]:
        """The objective values of a run's results (ObjectiveMissingError / TuningError if unusable)."""
        error = self.missing(results)
        if error is not None:
            raise error
        if self.returned is not None:
            return self._returned_values(self.returned, results)
        return [_number(results[key], repr(key)) for key in self.keys]

    def _returned_values(self, returned: tuple[str, str], results: Mapping[str, Any]) -> list[float]:
        one, many = returned
        raw = results[many] if many in results else results[one]
        given = list(raw) if isinstance(raw, (list, tuple)) else [raw]
        if len(given) != len(self.directions):
            shown = ", ".join(self.directions)
            raise TuningError(
                f"the objective returned {len(given)} value(s) ({raw!r}) but the study has {len(self.directions)} "
                f"direction(s) ({shown}); return one number per direction, or change direction=/directions="
            )
        return [_number(value, "value" if not self.multi else f"value {i}") for i, value in enumerate(given)]

    def results(self, values: Sequence[float]) -> dict[str, Any]:
        """The results a run records for these objective values (restoring a run from its trial)."""
        if self.returned is None:
            return dict(zip(self.keys, values))
        one, many = self.returned
        return {many: list(values)} if self.multi else {one: values[0]}


def direction_name(direction: Any) -> str:
    """ "minimize"/"maximize" from Optuna's names (any case) or a ``StudyDirection`` member."""
    name = getattr(direction, "name", direction)
    if isinstance(name, str) and name.lower() in ("minimize", "maximize"):
        return name.lower()
    raise TuningError(f"direction {direction!r} is neither 'minimize' nor 'maximize'")


def _number(value: Any, what: str) -> float:
    try:
        if isinstance(value, bool):
            raise TypeError
        return float(value)  # "NaN"/"Infinity" as the store keeps them read back too
    except (TypeError, ValueError):
        raise TuningError(f"objective {what} is {value!r}, not a number") from None


_OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq}
_TARGET = re.compile(r"^\s*([A-Za-z_][\w.\-]*)\s*(>=|<=|==|>|<)\s*(\S+)\s*$")


@dataclass(frozen=True)
class StopWhen:
    """A target on a trial's results; the search stops asking new trials once one reaches it."""

    key: str
    op: str
    value: float

    @classmethod
    def parse(cls, text: str) -> StopWhen:
        match = _TARGET.match(text) if isinstance(text, str) else None
        if match is None:
            raise TuningError(
                f"stop_when {text!r} is not KEY OP NUMBER; write e.g. 'accuracy>=0.95' (OP: >= <= > < ==)"
            )
        try:
            value = float(match.group(3))
        except ValueError:
            raise TuningError(f"stop_when {text!r}: {match.group(3)!r} is not a number") from None
        if math.isnan(value):
            raise TuningError(f"stop_when {text!r}: the target cannot be NaN")
        return cls(match.group(1), match.group(2), value)

    def reached(self, results: Mapping[str, Any]) -> bool:
        value = results.get(self.key)
        if value is None or isinstance(value, bool):
            return False
        try:
            return _OPS[self.op](float(value), self.value)
        except (TypeError, ValueError):
            return False

    def __str__(self) -> str:
        return f"{self.key}{self.op}{self.value:g}"
