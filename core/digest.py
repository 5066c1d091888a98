"""A digest of what a by-value callable does, the same in every process (for the function hash).

Functions without a source file (the REPL, notebooks, closures) are hashed over their bytecode,
constants, defaults, closure values and the globals they read, rather than over a pickle, whose
bytes vary between processes.
"""

from __future__ import annotations

import hashlib
import pickle
import re
import sys
import types
from collections.abc import Callable
from typing import Any


def bytecode_digest(func: Callable) -> str:
    """A digest of what a by-value callable does, equal across processes on one Python version.

    It covers the bytecode and constants, defaults, closure values and the globals the code reads:
    functions and classes shipped along (same module or ``__main__``) recursively, modules and other
    importable objects by name, data by value. Two closures from one factory with different captured
    values differ; set constants are sorted so the string hash seed does not matter.
    """
    return _Digest(getattr(func, "__module__", None)).of(func)


class _Digest:
    """Accumulates ``bytecode_digest``; ``seen`` stops recursion through mutually recursive functions."""

    def __init__(self, module: str | None):
        self.module = module
        self.sha = hashlib.sha256(f"py{sys.version_info[0]}.{sys.version_info[1]}".encode())
        self.seen: set[int] = set()

    def of(self, func: Callable) -> str:
        self.value(func)
        return self.sha.hexdigest()

    def add(self, text: str) -> None:
        self.sha.update(text.encode("utf-8", "backslashreplace") + b"\0")

    def ships_by_value(self, obj: Any) -> bool:
        module = getattr(obj, "__module__", None)
        return module in (self.module, "__main__") or "<locals>" in getattr(obj, "__qualname__", "")

    def value(self, obj: Any) -> None:
        inner = getattr(obj, "__shoal_callable__", None) if not isinstance(obj, type) else None
        obj = inner if inner is not None else obj
        if isinstance(obj, types.MethodType):  # a bound method runs its function on its instance
            self.value(obj.__func__)
            self.value(obj.__self__)
            return
        if isinstance(obj, (types.FunctionType, type, types.ModuleType)):
            if id(obj) in self.seen:
                self.add("<seen>")
                return
            self.seen.add(id(obj))
        if isinstance(obj, types.ModuleType):
            self.add(f"module:{obj.__name__}")
        elif isinstance(obj, types.FunctionType) and self.ships_by_value(obj):
            self.function(obj)
        elif isinstance(obj, type) and self.ships_by_value(obj):
            self.add(f"class:{obj.__qualname__}")
            for name, member in sorted(vars(obj).items()):
                if not name.startswith("__") or name in ("__init__", "__call__"):
                    self.add(name)
                    self.value(getattr(member, "__func__", member))
        elif callable(obj) and hasattr(obj, "__qualname__"):
            self.add(f"ref:{getattr(obj, '__module__', '?')}.{obj.__qualname__}")  # importable on workers
        else:
            if self.ships_by_value(type(obj)):  # an instance of a class shipped along
                self.value(type(obj))
            self.add(_data_digest(obj))

    def function(self, func: types.FunctionType) -> None:
        names = self.code(func.__code__)
        for default in func.__defaults__ or ():
            self.add("default")
            self.value(default)  # may be a function: its repr would hold a memory address
        for name, default in sorted((func.__kwdefaults__ or {}).items()):
            self.add(f"kwdefault:{name}")
            self.value(default)
        for name, cell in zip(func.__code__.co_freevars, func.__closure__ or ()):
            self.add(f"free:{name}")
            try:
                self.value(cell.cell_contents)
            except ValueError:  # a cell not filled yet
                self.add("<empty>")
        for name in sorted(names):
            if name in func.__globals__:
                self.add(f"global:{name}")
                self.value(func.__globals__[name])

    def code(self, code: types.CodeType) -> set[str]:
        """Feed a code object (and nested ones); return every global name it may read."""
        self.sha.update(code.co_code)
        self.add(repr((code.co_names, code.co_varnames, code.co_freevars, code.co_cellvars)))
        names = set(code.co_names)
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                names |= self.code(const)
            else:
                self.add(_stable_repr(const))
        return names


def _stable_repr(value: Any) -> str:
    """repr of a code constant, with sets sorted so it does not depend on the string hash seed."""
    if isinstance(value, (set, frozenset)):
        return f"{type(value).__name__}({sorted(_stable_repr(v) for v in value)})"
    if isinstance(value, tuple):
        return f"tuple({[_stable_repr(v) for v in value]})"
    return repr(value)


SCALARS = (type(None), bool, int, float, complex, str, bytes, type(Ellipsis))


def _data_digest(value: Any, depth: int = 0) -> str:
    """A data value captured by a by-value function, the same in every process: scalars by repr,
    containers item by item (sets sorted), others by their pickle (exact, unlike a truncated array
    repr), objects pickle cannot take (instances of local classes) by their attributes, else by a
    repr without memory addresses."""
    if isinstance(value, SCALARS):
        return repr(value)
    if depth < 20:
        if isinstance(value, (set, frozenset)):
            return f"{type(value).__name__}({sorted(_data_digest(v, depth + 1) for v in value)})"
        if isinstance(value, (list, tuple)):
            return f"{type(value).__name__}({[_data_digest(v, depth + 1) for v in value]})"
        if isinstance(value, dict):
            items = [(_data_digest(k, depth + 1), _data_digest(v, depth + 1)) for k, v in value.items()]
            return f"{type(value).__name__}({items})"
    try:
        return "pickle:" + hashlib.sha256(pickle.dumps(value, protocol=4)).hexdigest()
    except Exception:  # noqa: BLE001 - not picklable: fall back to its attributes or description
        pass
    attributes = getattr(value, "__dict__", None)
    if isinstance(attributes, dict) and depth < 20:
        items = sorted((str(k), _data_digest(v, depth + 1)) for k, v in attributes.items())
        return f"{type(value).__qualname__}:{items}"
    return f"{type(value).__qualname__}:" + re.sub(r" at 0x[0-9a-fA-F]+", "", repr(value))
