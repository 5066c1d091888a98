"""Search spaces: ``Float``/``Int``/``Categorical`` entries, plain lists, constants, and the CLI's DSL.

Every entry is checked when the space is built (low > high, log with low <= 0, empty choices), so a
bad space fails before anything runs or is recorded. Entries turn into Optuna distributions only when
a search starts (Optuna is imported lazily).
"""

from __future__ import annotations

import ast
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from shoal.errors import SpaceError

__all__ = ["Categorical", "Float", "Int", "Space", "parse_entry", "parse_assignment"]


def _number(value: Any, what: str, *, whole: bool = False) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpaceError(f"{what} must be a number, got {value!r}")
    if whole and not float(value).is_integer():
        raise SpaceError(f"{what} must be a whole number, got {value!r}")
    if not math.isfinite(value):
        raise SpaceError(f"{what} must be finite, got {value!r}")
    return int(value) if whole else value


@dataclass(frozen=True)
class Float:
    """A float between ``low`` and ``high`` (inclusive), on a log scale with ``log=True``, or on a
    grid of ``step``."""

    low: float
    high: float
    log: bool = False
    step: float | None = None

    def __post_init__(self) -> None:
        _number(self.low, "Float low")
        _number(self.high, "Float high")
        _check_range(self, "Float")
        if self.step is not None:
            step = _number(self.step, "Float step")
            if step <= 0:
                raise SpaceError(f"Float step must be > 0, got {self.step!r}")
            if self.log:
                raise SpaceError("Float cannot have both log=True and a step; drop one")

    def distribution(self):
        from optuna.distributions import FloatDistribution

        return FloatDistribution(float(self.low), float(self.high), log=self.log, step=self.step)

    def grid(self) -> list | None:
        if self.step is None:
            return None
        count = int(math.floor((self.high - self.low) / self.step + 1e-9)) + 1
        return [round(self.low + i * self.step, 12) for i in range(count)]


@dataclass(frozen=True)
class Int:
    """A whole number between ``low`` and ``high`` (inclusive), every ``step``, or on a log scale."""

    low: int
    high: int
    log: bool = False
    step: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "low", _number(self.low, "Int low", whole=True))
        object.__setattr__(self, "high", _number(self.high, "Int high", whole=True))
        object.__setattr__(self, "step", _number(self.step, "Int step", whole=True))
        _check_range(self, "Int")
        if self.step < 1:
            raise SpaceError(f"Int step must be >= 1, got {self.step!r}")
        if self.log and self.step != 1:
            raise SpaceError("Int cannot have both log=True and a step other than 1; drop one")

    def distribution(self):
        from optuna.distributions import IntDistribution

        return IntDistribution(self.low, self.high, log=self.log, step=self.step)

    def grid(self) -> list | None:
        return list(range(self.low, self.high + 1, self.step))


@dataclass(frozen=True)
class Categorical:
    """One of ``choices`` (None, bool, int, float or str values)."""

    choices: tuple

    def __init__(self, choices: Sequence[Any]):
        if isinstance(choices, (str, bytes)) or not isinstance(choices, Sequence):
            raise SpaceError(f"Categorical takes a list of choices, e.g. Categorical(['a', 'b']), got {choices!r}")
        if len(choices) == 0:
            raise SpaceError("Categorical needs at least one choice; got an empty list")
        for choice in choices:
            if choice is not None and not isinstance(choice, (bool, int, float, str)):
                raise SpaceError(
                    f"Categorical choices must be None, bool, int, float or str, got {type(choice).__name__} {choice!r}"
                )
        object.__setattr__(self, "choices", tuple(choices))

    def distribution(self):
        from optuna.distributions import CategoricalDistribution

        return CategoricalDistribution(self.choices)

    def grid(self) -> list:
        return list(self.choices)


Entry = Float | Int | Categorical


def _check_range(entry: Float | Int, kind: str) -> None:
    if entry.low > entry.high:
        raise SpaceError(f"{kind} low ({entry.low}) is above high ({entry.high}); swap them")
    if entry.log and entry.low <= 0:
        raise SpaceError(f"{kind} with log=True needs low > 0, got low={entry.low}; use a positive lower bound")


class Space:
    """A checked search space: searched entries, and constants passed to every trial unchanged."""

    def __init__(self, space: Mapping[str, Any] | None):
        if space is None:
            space = {}
        if not isinstance(space, Mapping):
            raise SpaceError(
                f"space must be a mapping of parameter -> Float/Int/Categorical/list, got {type(space).__name__}"
            )
        self.entries: dict[str, Entry] = {}
        self.constants: dict[str, Any] = {}
        for name, value in space.items():
            if not isinstance(name, str) or not name.isidentifier():
                raise SpaceError(f"space parameter names must be identifiers, got {name!r}")
            try:
                entry = _as_entry(value)
            except SpaceError as exc:
                raise SpaceError(f"space[{name!r}]: {exc}") from None
            if entry is None:
                self.constants[name] = value
            else:
                self.entries[name] = entry

    def distributions(self) -> dict[str, Any]:
        return {name: entry.distribution() for name, entry in self.entries.items()}

    def signature(self) -> dict[str, Any]:
        """What identifies the search space of a study (Optuna's JSON form of each distribution)."""
        from optuna.distributions import distribution_to_json

        return {name: json.loads(distribution_to_json(d)) for name, d in sorted(self.distributions().items())}

    def grid(self, strategy: str) -> dict[str, list]:
        """Every entry's values for the grid and list strategies (continuous floats are refused)."""
        out = {}
        for name, entry in self.entries.items():
            values = entry.grid()
            if values is None:
                assert isinstance(entry, Float)  # the one entry without a grid: a Float with no step
                raise SpaceError(
                    f"space[{name!r}] is a continuous Float: the {strategy!r} strategy needs a list of values "
                    f"or a step, e.g. Float({entry.low}, {entry.high}, step=0.1)"
                )
            out[name] = values
        return out

    def sample(self) -> dict[str, Any]:
        """One valid assignment (each entry's low bound or first choice), to check the handler."""
        out = dict(self.constants)
        for name, entry in self.entries.items():
            out[name] = entry.choices[0] if isinstance(entry, Categorical) else entry.low
        return out

    def describe(self) -> dict[str, str]:
        return {name: repr(entry) for name, entry in self.entries.items()} | {
            name: repr(value) for name, value in self.constants.items()
        }


def suggest(trial: Any, name: str, distribution: Any) -> Any:
    """``trial``'s value for ``name`` from an Optuna distribution, through Optuna's public suggest API."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if isinstance(distribution, FloatDistribution):
        return trial.suggest_float(
            name, distribution.low, distribution.high, log=distribution.log, step=distribution.step
        )
    if isinstance(distribution, IntDistribution):
        return trial.suggest_int(
            name, distribution.low, distribution.high, log=distribution.log, step=distribution.step
        )
    if isinstance(distribution, CategoricalDistribution):
        return trial.suggest_categorical(name, distribution.choices)
    raise TypeError(f"no suggest call for {type(distribution).__name__} ({name})")


def _as_entry(value: Any) -> Entry | None:
    if isinstance(value, (Float, Int, Categorical)):
        return value
    if isinstance(value, (list, tuple)):
        return Categorical(list(value))
    if type(value).__module__.startswith("optuna.distributions"):
        raise SpaceError("give shoal.tuning.Float/Int/Categorical (or a list), not an Optuna distribution")
    return None  # a constant


# -- the DSL of the command line ---------------------------------------------------------------------
_FUNCS = ("uniform", "loguniform", "float", "int", "logint", "choice", "categorical")
DSL_HELP = (
    "write e.g. 'uniform(0,1)', 'loguniform(1e-4,1)', 'float(0,1,step=0.1)', 'float(1e-3,1,log=true)', "
    "'int(2,10)', 'int(1,1024,log=true)', '[a,b,c]' or a constant"
)


def parse_assignment(text: str) -> tuple[str, Any]:
    """``'lr=loguniform(1e-4,1)'`` -> ``('lr', Float(0.0001, 1, log=True))``."""
    name, sep, value = text.partition("=")
    name = name.strip()
    if not sep or not name.isidentifier():
        raise SpaceError(f"--space {text!r} is not NAME=SPEC; {DSL_HELP}")
    try:
        return name, parse_entry(value)
    except SpaceError as exc:
        raise SpaceError(f"--space {name}: {exc}") from None


def parse_entry(text: str) -> Any:
    """One DSL value: a Float/Int/Categorical, or a constant (number, true/false, text)."""
    source = text.strip()
    if not source:
        raise SpaceError(f"empty value; {DSL_HELP}")
    try:
        node = ast.parse(source, mode="eval").body
    except SyntaxError:
        return _literal_text(source)
    if isinstance(node, ast.List):
        return Categorical([_scalar(element, source) for element in node.elts])
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        return _call(node, node.func.id, source)
    try:
        return _scalar(node, source)
    except SpaceError:
        return _literal_text(source)  # e.g. a path such as data/train.csv


def _call(node: ast.Call, func: str, source: str) -> Entry:
    name = func.lower()
    if name not in _FUNCS:
        raise SpaceError(f"unknown space function {func!r} in {source!r}; {DSL_HELP}")
    args = [_scalar(arg, source) for arg in node.args]
    kwargs = {kw.arg: _scalar(kw.value, source) for kw in node.keywords if kw.arg}
    if name in ("choice", "categorical"):
        return Categorical(args)
    unknown = sorted(set(kwargs) - {"log", "step"})
    if unknown:
        raise SpaceError(f"unknown option {unknown[0]!r} in {source!r}; options are log and step")
    if len(args) != 2:
        raise SpaceError(f"{name}() takes a low and a high bound, got {len(args)} values in {source!r}")
    log = kwargs.get("log", False)
    if not isinstance(log, bool):
        raise SpaceError(f"log must be true or false in {source!r}")
    if name in ("int", "logint"):
        return Int(args[0], args[1], log=log or name == "logint", step=kwargs.get("step", 1))
    return Float(args[0], args[1], log=log or name == "loguniform", step=kwargs.get("step"))


_WORDS = {"true": True, "false": False, "none": None, "null": None}


def _scalar(node: ast.AST, source: str) -> Any:
    """A literal number/string/bool, or a bare word taken as text (``[a,b]`` means ``['a','b']``)."""
    if isinstance(node, ast.Name):
        return _WORDS.get(node.id.lower(), node.id)
    if isinstance(node, ast.Attribute):  # a.b: dotted text such as a module path
        return ast.unparse(node)
    if isinstance(node, (ast.List, ast.Tuple, ast.Dict, ast.Set)):
        raise SpaceError(f"nested values are not supported in {source!r}; {DSL_HELP}")
    try:
        value = ast.literal_eval(node)
    except (ValueError, SyntaxError):
        raise SpaceError(f"cannot read {ast.unparse(node)!r} in {source!r}; {DSL_HELP}") from None
    if isinstance(value, (list, tuple, dict, set)):
        raise SpaceError(f"nested values are not supported in {source!r}; {DSL_HELP}")
    return value


def _literal_text(source: str) -> Any:
    if source.startswith("[") or "(" in source:
        raise SpaceError(f"cannot parse {source!r}; {DSL_HELP}")
    return source  # a constant string such as a path
