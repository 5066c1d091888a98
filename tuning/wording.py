"""How a search's errors and warnings name its options: ``study=`` to a Python caller, ``--study NAME``
to someone at the command line, so that every hint can be followed where it is read.

The command line marks its calls with ``command_line()``; messages spell options with ``option``.
A context variable, not a global: a Python search in another thread keeps Python's spelling.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

_FROM_CLI: contextvars.ContextVar[bool] = contextvars.ContextVar("shoal_tuning_from_cli", default=False)

#: tune() keyword -> the ``shoal tune`` flag that sets it
FLAGS = {
    "study": "--study NAME",
    "storage": "--storage URL",
    "n_trials": "--trials N",
    "timeout": "--timeout SECONDS",
    "parallelism": "--parallelism N",
    "pruner": "--pruner",
    "objective": "--objective",
    "direction": "--direction",
    "directions": "--direction (repeated)",
    "max_failures": "--max-failures N",
}


@contextlib.contextmanager
def command_line() -> Iterator[None]:
    """Messages raised inside name command-line flags."""
    token = _FROM_CLI.set(True)
    try:
        yield
    finally:
        _FROM_CLI.reset(token)


def from_cli() -> bool:
    return _FROM_CLI.get()


def option(name: str, value: object = None) -> str:
    """``name`` as the reader sets it: ``study=`` / ``study='x'``, or ``--study NAME`` / ``--study x``."""
    if from_cli():
        flag = FLAGS[name]
        return flag if value is None else f"{flag.split()[0]} {value}"
    return f"{name}=" if value is None else f"{name}={value!r}"


def delete_study(name: str) -> str:
    """How to delete study ``name`` and start it afresh."""
    if from_cli():
        return f"shoal studies delete {name}"
    return f"shoal.tuning.delete_study({name!r})"
