"""Objective selectors (``"max.accuracy"``, ``"min.loss"``) and stop targets (``"accuracy>=0.95"``).

Both are parsed before a search starts, so a typo is an error at once rather than a failed search.
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from shoal.errors import ObjectiveMissingError, TuningError

_SELECTOR = re.compile(r"^(max|min)\.(.+)$")
_DIRECTIONS = {"max": "maximize", "min": "minimize"}


@dataclass(frozen=True)
class Objective:
    """One or more result keys, each maximised or minimised."""

    keys: tuple[str, ...]
    directions: tuple[str, ...]  # "maximize" / "minimize", as Optuna names them

    @classmethod
    def parse(cls, objective: str | Sequence[str]) -> "Objective":
        selectors = [objective] if isinstance(objective, str) else list(objective or ())
        if not selectors:
            raise TuningError("objective is empty; give e.g. objective='max.accuracy' or ['max.accuracy', 'min.latency']")
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

    @property
    def multi(self) -> bool:
        return len(self.keys) > 1

    def selectors(self) -> list[str]:
        return [f"{'max' if d == 'maximize' else 'min'}.{k}" for k, d in zip(self.keys, self.directions)]

    def missing(self, results: Mapping[str, Any]) -> ObjectiveMissingError | None:
        """The error for a run that did not log every objective key, else None."""
        absent = [key for key in self.keys if key not in results]
        if not absent:
            return None
        logged = ", ".join(sorted(results)) or "none"
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
        out = []
        for key in self.keys:
            value = results[key]
            try:
                if isinstance(value, bool):
                    raise TypeError
                out.append(float(value))  # "NaN"/"Infinity" as the store keeps them read back too
            except (TypeError, ValueError):
                raise TuningError(f"objective {key!r} is {value!r}, not a number") from None
        return out


_OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq}
_TARGET = re.compile(r"^\s*([A-Za-z_][\w.\-]*)\s*(>=|<=|==|>|<)\s*(\S+)\s*$")


@dataclass(frozen=True)
class StopWhen:
    """A target on a trial's results; the search stops asking new trials once one reaches it."""

    key: str
    op: str
    value: float

    @classmethod
    def parse(cls, text: str) -> "StopWhen":
        match = _TARGET.match(text) if isinstance(text, str) else None
        if match is None:
            raise TuningError(f"stop_when {text!r} is not KEY OP NUMBER; write e.g. 'accuracy>=0.95' (OP: >= <= > < ==)")
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
