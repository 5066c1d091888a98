"""The shoal functions a pipeline's body calls, found without running it, for the pipeline's hash.

A pipeline whose steps live in another file (``train = shoal.Function.from_file("steps.py", ...)``)
would keep its hash when ``train`` changes, since only the pipeline's own file is its code. So the
pipeline's hash also covers the hash of every ``shoal.Function`` its body names: globals and
closure variables read by the body (nested functions and comprehensions included), also inside a
list, tuple or dict held by such a name, and functions reached as ``module.name``.
"""

from __future__ import annotations

import hashlib
import types
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from shoal.hashing import canonical_json


def referenced_functions(body: Callable) -> dict[str, Any]:
    """``{name: shoal.Function}`` for each function the body refers to (a container's items get
    ``name[i]`` / ``name[key]``; a module attribute ``module.name``)."""
    from shoal.function import Function

    target = getattr(body, "__wrapped__", body)
    code = getattr(target, "__code__", None)
    if code is None:
        return {}
    scope: dict[str, Any] = dict(getattr(target, "__globals__", {}) or {})
    for name, cell in zip(code.co_freevars, getattr(target, "__closure__", None) or ()):
        try:
            scope[name] = cell.cell_contents
        except ValueError:  # an empty cell (assigned later in the enclosing function)
            continue
    names = set(_names(code))
    found: dict[str, Any] = {}
    for name in sorted(names):
        if name not in scope:
            continue
        value = scope[name]
        if isinstance(value, types.ModuleType):
            for attribute in sorted(names):
                try:
                    item = getattr(value, attribute, None)
                except Exception:  # noqa: BLE001 - a module's lazy __getattr__ failing: not a step
                    continue
                if isinstance(item, Function):
                    found[f"{name}.{attribute}"] = item
            continue
        for label, item in _functions_in(name, value, Function):
            found[label] = item
    return found


def steps_digest(body: Callable, skip: type) -> dict[str, str]:
    """``{name: hash}`` of the functions the body refers to, leaving out those of type ``skip``
    (pipelines: the pipeline itself, which a body may name, and others, which are never steps)."""
    return {name: fn.hash for name, fn in referenced_functions(body).items() if not isinstance(fn, skip)}


def combined_hash(base: str, steps: Mapping[str, str]) -> str:
    """The pipeline's hash: its own (code and spec) with its steps' hashes; no steps: ``base``."""
    if not steps:
        return base
    document = {"pipeline": base, "steps": dict(sorted(steps.items()))}
    return hashlib.sha256(canonical_json(document).encode()).hexdigest()


def _names(code: types.CodeType) -> Iterator[str]:
    """Global and free names read by ``code`` and the code objects nested in it."""
    yield from code.co_names
    yield from code.co_freevars
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _names(const)


def _functions_in(label: str, value: Any, kind: type) -> Iterator[tuple[str, Any]]:
    """``value`` if it is a shoal Function, or the Functions one level inside a list, tuple or dict."""
    if isinstance(value, kind):
        yield label, value
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            if isinstance(item, kind):
                yield f"{label}[{index}]", item
    elif isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, kind):
                yield f"{label}[{key!r}]", item
