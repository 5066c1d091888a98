"""Handlers that travel by value (cloudpickle), so that workers never run the script that defines them.

Raw Ray ships a function of the driver's ``__main__`` by value, with the globals it uses, and a
script without a main guard works there. shoal does the same for handlers of the script the driver
runs and of files the driver ran as a function's code (``Function.from_file``): their module exists
in this process only. The source text still travels beside them, for the hash and the store.
"""

from __future__ import annotations

import base64
import logging
import os
import sys
import threading
import types
import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger("shoal.code")

LOADED_PREFIX = "shoal_code_"  # names of the modules function files run as (``shoal.code._module_for``)
_DYNAMIC = "<dynamic-code>"  # the file name cloudpickle gives the code objects it ships


def is_main_script(path: str | os.PathLike) -> bool:
    """Whether ``path`` is the script this process runs (its ``__main__``, also ``python -m``)."""
    main = getattr(sys.modules.get("__main__"), "__file__", None)
    if not main:
        return False
    try:
        return os.path.samefile(main, path)
    except OSError:
        return False


def main_script_object(path: str | os.PathLike, handler: str) -> Any:
    """The object the running script (``__main__``) binds to ``handler``, if ``path`` is that script
    and the name is bound already; else None. Used instead of running the script a second time."""
    if not is_main_script(path):
        return None
    obj: Any = sys.modules["__main__"]
    for part in handler.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def defined_by_loaded_code(obj: Any) -> bool:
    """Whether ``obj`` comes from a file this process ran as a function's code (e.g. by
    ``Function.from_file`` in the driver): a module only this process has."""
    name = getattr(obj, "__module__", None)
    return isinstance(name, str) and name.startswith(LOADED_PREFIX) and name in sys.modules


_pickling = threading.local()  # .ids: ids of the objects this thread is pickling by value


def pickle_live(live: Any, origin: str | None) -> str | None:
    """cloudpickle of ``live`` by value (with the helpers, classes and globals it uses), base64;
    None, with a warning, when it cannot be pickled (workers then run ``origin``'s text)."""
    import cloudpickle

    if defined_by_loaded_code(live):  # by value too, rather than by a module name workers lack
        cloudpickle.register_pickle_by_value(sys.modules[live.__module__])
    ids = _pickling.__dict__.setdefault("ids", set())
    ids.add(id(live))
    try:
        with _annotations_resolved(live):
            return base64.b64encode(cloudpickle.dumps(live)).decode()
    except Exception as exc:  # noqa: BLE001 - cloudpickle raises many kinds
        log.warning(
            "cannot ship %s by value (%s: %s); workers run its file %s instead, top-level code included: "
            "put the script's runs under `if __name__ == \"__main__\":`",
            getattr(live, "__qualname__", live), type(exc).__name__, exc, origin,
        )  # fmt: skip
        return None
    finally:
        ids.discard(id(live))


@contextmanager
def _annotations_resolved(live: Any) -> Iterator[None]:
    """While ``live`` is pickled, its string annotations (a file with ``from __future__ import
    annotations``) are the types they name: cloudpickle ships only the globals a function's body
    uses, so on a worker the strings could not be resolved and its parameters would not be converted."""
    annotations = getattr(live, "__annotations__", None) if isinstance(live, types.FunctionType) else None
    if not annotations or not any(isinstance(a, str) for a in annotations.values()):
        yield
        return
    try:
        resolved = typing.get_type_hints(live, include_extras=True)
    except Exception:  # noqa: BLE001 - a name that does not resolve here: ship the strings as they are
        yield
        return
    live.__annotations__ = {**annotations, **{k: v for k, v in resolved.items() if k in annotations}}
    try:
        yield
    finally:
        live.__annotations__ = annotations


def pickling_by_value(live: Any) -> bool:
    """Whether this thread is pickling ``live`` by value right now: a Function wrapping it met inside
    (a handler calling itself through its decorated name) travels with its callable, in the same
    pickle, rather than pickling its code again."""
    return live is not None and id(live) in getattr(_pickling, "ids", ())


_unpickled: dict[str, Any] = {}  # base64 pickle -> object, in each process (workers run many tasks)
_KEEP = 64


def unpickled(text: str, origin: str | None = None, on_first: Callable[[], None] | None = None) -> Any:
    """The object of a by-value pickle (cached). With ``origin``, code of the pickled object's own
    module gets that file name back (cloudpickle ships ``<dynamic-code>``), so tracebacks name the
    user's file and lines. ``on_first`` is called before a pickle is loaded the first time."""
    found = _unpickled.get(text)
    if found is not None:
        return found
    import cloudpickle

    if on_first is not None:
        on_first()

    found = cloudpickle.loads(base64.b64decode(text))
    module = getattr(found, "__module__", None)
    if origin and isinstance(module, str):
        _restore_filenames(found, module, origin, set())
    if len(_unpickled) >= _KEEP:
        _unpickled.pop(next(iter(_unpickled)))
    _unpickled[text] = found
    return found


def _restore_filenames(obj: Any, module: str, filename: str, seen: set[int]) -> None:
    """Name ``filename`` in the code of the functions and classes of ``module`` reachable from ``obj``
    (through globals, closures, class members and shoal Functions' callables)."""
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, (types.FunctionType, type)) and obj.__module__ != module:
        return
    if isinstance(obj, types.FunctionType):
        if obj.__code__.co_filename == _DYNAMIC:
            obj.__code__ = _renamed(obj.__code__, filename)
        for name in obj.__code__.co_names:
            if name in obj.__globals__:
                _restore_filenames(obj.__globals__[name], module, filename, seen)
        for cell in obj.__closure__ or ():
            try:
                _restore_filenames(cell.cell_contents, module, filename, seen)
            except ValueError:  # an empty cell
                pass
    elif isinstance(obj, type):
        for member in list(vars(obj).values()):
            _restore_filenames(getattr(member, "__func__", member), module, filename, seen)
    elif hasattr(type(obj), "__shoal_callable__"):  # a shoal.Function: the plain callable it wraps
        inner = getattr(obj, "_callable", None)
        if inner is not None:
            _restore_filenames(inner, module, filename, seen)


def _renamed(code: types.CodeType, filename: str) -> types.CodeType:
    consts = tuple(_renamed(c, filename) if isinstance(c, types.CodeType) else c for c in code.co_consts)
    return code.replace(co_filename=filename, co_consts=consts)
