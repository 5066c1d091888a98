"""What the CLI's commands share: the project they act on, the function a target names, ``k=v``
options, and stdout kept for ``--json`` documents."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

from shoal.errors import ParamError


def open_project():
    """The project of the current folder (``shoal -C DIR`` changed into it first)."""
    import shoal

    return shoal.project(".")


def pairs(values: list[str], option: str) -> dict[str, str]:
    """``--param k=v`` values as a mapping; a value without ``=`` is a ParamError naming the option."""
    out = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ParamError(f"{option} {item!r} is not key=value; write e.g. {option} lr=0.1")
        out[key.strip()] = value
    return out


def load_target(target: str):
    """``file.py:handler`` from a file, a ``hub://`` reference, else a name/tag/hash from shoal.yaml or the store."""
    from shoal import Function

    if target.startswith("hub://"):
        return open_project().get_function(target)  # a verified import: see shoal.hub
    path, sep, handler = target.rpartition(":")
    if sep and (path.endswith(".py") or os.path.isfile(path)):
        return Function.from_file(path, handler)
    if target.endswith(".py"):
        raise ParamError(f"name the handler too: {target}:<function name>")
    return open_project().get_function(target)


def input_paths(inputs: dict[str, str]) -> dict[str, str]:
    """``--input`` values are paths or URLs: a local path that does not exist is a typo.

    (The Python API stores a plain string as a value; on the command line that would silently turn
    ``--input data=trian.csv`` into the text "trian.csv".)
    """
    for key, value in inputs.items():
        if "://" not in value and not os.path.exists(value):
            raise ParamError(
                f"--input {key}={value}: no such file; give an existing path or a URL (s3://..., gs://...)"
            )
    return inputs


@contextlib.contextmanager
def stdout_reserved(as_json: bool) -> Iterator[None]:
    """With ``--json``, stdout carries the JSON document only: whatever else is printed meanwhile
    (a module-level ``print`` in the user's file, an engine's banner) goes to stderr."""
    if not as_json:
        yield
        return
    with contextlib.redirect_stdout(sys.stderr):
        yield
