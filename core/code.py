"""Capturing a handler's code so workers can rebuild it without the user's checkout.

Functions from real files ship the whole source file (``# shoal: ignore`` drops a line,
``# shoal: start-code`` / ``# shoal: end-code`` keep only a region). Functions whose file is not
available or does not define them at module level (the plain REPL, notebook cells, closures,
lambdas, functions defined under ``if __name__ == "__main__":``) ship by value with cloudpickle.

A script's top-level code never runs on a worker: handlers of the script the driver runs, and of
files the driver ran as function code (``Function.from_file``), also travel by value (``live`` /
``by_value``; the text is still what is hashed and stored). And a file run as function code starts
no runs: ``refuse_runs_while_loading`` ends its load at such a call.

Reading and checking a source file (the shoal comments, the top-level names) is in
``shoal.source_files``.
"""

from __future__ import annotations

import base64
import hashlib
import inspect
import linecache
import logging
import os
import sys
import threading
import types
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from . import logcapture
from .by_value import LOADED_PREFIX, defined_by_loaded_code, is_main_script, pickle_live, unpickled
from .digest import bytecode_digest
from .errors import CodeError
from .source_files import apply_annotations, check_defined, parse, read_source, source_lines

__all__ = [
    "Code",
    "LoadStopped",
    "apply_annotations",
    "bytecode_digest",
    "capture",
    "load_handler",
    "load_object",
    "refuse_runs_while_loading",
    "source_from_file",
    "source_lines",
]

log = logging.getLogger("shoal.code")


@dataclass(frozen=True)
class Code:
    """The shipped code of a function.

    ``kind`` is "source" (module text executed on the worker) or "pickle" (base64 cloudpickle of the
    callable). ``origin`` and ``first_line`` only make tracebacks point at the user's file; they are
    not hashed.
    """

    kind: Literal["source", "pickle"]
    text: str
    origin: str | None = None
    first_line: int = 1
    fingerprint_hint: str | None = None  # for pickles: a stable digest of the bytecode
    # Source of the script the driver runs (``__main__``), or of a file it ran as function code
    # (``from_file``), also travels by value: ``live`` is the handler object in the driver,
    # ``by_value`` its cloudpickle (base64), made when the code is first pickled to ship. Workers
    # use ``by_value`` and never run the file; neither is hashed nor part of ``to_dict`` (the text
    # stays what the hash and the store see).
    live: Any = field(default=None, compare=False, repr=False)
    by_value: str | None = field(default=None, compare=False, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["live"] = None  # the driver's own object never travels as is
        state["by_value"] = self.shipped_value()
        return state

    def shipped_value(self) -> str | None:
        """The handler by value (base64 cloudpickle), made once from ``live``; None when the code
        ships as text only, or when the handler cannot be pickled (then workers run the text, see
        ``shoal.by_value.pickle_live``)."""
        if self.by_value is None and self.live is not None:
            object.__setattr__(self, "by_value", pickle_live(self.live, self.origin) or "")
        return self.by_value or None

    def with_live(self, obj: Any) -> Code:
        """This source code, shipping ``obj`` (the handler as this process has it) by value too."""
        return replace(self, live=obj, by_value=None)

    @property
    def fingerprint(self) -> str:
        """What the function hash covers for the code: the source text, or the bytecode digest."""
        if self.kind == "source":
            return hashlib.sha256(self.text.encode()).hexdigest()
        return self.fingerprint_hint or hashlib.sha256(self.text.encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": self.kind, "text": self.text}
        if self.origin:
            data["origin"] = self.origin
        if self.first_line != 1:
            data["first_line"] = self.first_line
        if self.fingerprint_hint:
            data["fingerprint"] = self.fingerprint_hint
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Code:
        if not isinstance(data, dict) or data.get("kind") not in ("source", "pickle") or "text" not in data:
            raise CodeError("invalid 'code' section: expected {kind: source|pickle, text: ...}")
        if not isinstance(data["text"], str):
            raise CodeError("invalid 'code' section: 'text' must be a string")
        first_line = data.get("first_line", 1)
        if isinstance(first_line, bool) or not isinstance(first_line, int) or first_line < 1:
            raise CodeError(f"invalid 'code' section: first_line must be a line number >= 1, not {first_line!r}")
        return cls(
            kind=data["kind"],
            text=data["text"],
            origin=data.get("origin"),
            first_line=int(data.get("first_line", 1)),
            fingerprint_hint=data.get("fingerprint"),
        )


def source_from_file(path: str | os.PathLike, handler: str) -> Code:
    """Read ``path``, apply annotations and check that ``handler`` is defined at its top level."""
    path = os.path.abspath(os.fspath(path))
    return _checked_source(read_source(path), handler, path)


def _checked_source(raw: str, handler: str, origin: str) -> Code:
    text, first = apply_annotations(raw)
    check_defined(parse(text, origin, first), handler, origin)
    return Code(kind="source", text=text, origin=origin, first_line=first)


def capture(func: Callable) -> Code:
    """Capture the code of a live callable: its whole file when that file defines it at module level,
    else the callable itself by value (REPL, notebook cells, closures, lambdas, ``__main__`` guards).

    Notebook cells are in-memory sources: a cell alone misses the imports and globals of earlier
    cells and re-runs its own side effects, so cells ship by value like the REPL.
    """
    qualname = getattr(func, "__qualname__", "")
    if inspect.ismethod(func) and not isinstance(func.__self__, type):
        return _pickled(func)  # bound to an instance: the source alone would lose ``self``
    path = _source_file(func)
    if path and all(part.isidentifier() for part in qualname.split(".")):
        try:
            code = source_from_file(path, qualname)
        except CodeError:
            pass  # the file (as it is now) does not define it where a worker can find it
        else:
            return code.with_live(func) if is_main_script(path) or defined_by_loaded_code(func) else code
    return _pickled(func)


def _source_file(func: Callable) -> str | None:
    """The existing file the callable was defined in, if any (for a ``functools.wraps`` wrapper, the
    file of the wrapped function: running that file re-applies the decorators)."""
    try:
        path = inspect.getsourcefile(inspect.unwrap(func))
    except (TypeError, ValueError):  # builtins and C functions; unwrap cycles
        return None
    return path if path and os.path.isfile(path) else None


def _pickled(func: Callable) -> Code:
    import cloudpickle

    try:
        payload = cloudpickle.dumps(func)
    except Exception as exc:  # noqa: BLE001 - cloudpickle raises many kinds
        raise CodeError(f"cannot capture the code of {func!r}: {exc}; define it in a .py file instead") from None
    return Code(
        kind="pickle",
        text=base64.b64encode(payload).decode(),
        origin=f"<{getattr(func, '__module__', '?')}>",
        fingerprint_hint=bytecode_digest(func),
    )


_modules: dict[str, types.ModuleType] = {}
# Re-entrant: shipped code may build or call other shipped functions while it loads (a pipeline file
# doing ``shoal.Function.from_file("prep.py", "prep")`` at its top level); a plain Lock deadlocked.
_modules_lock = threading.RLock()


def load_handler(code: Code, handler: str) -> Callable:
    """Rebuild the handler from shipped code (cached per code fingerprint in this process)."""
    return _unwrap(load_object(code, handler))


def load_object(code: Code, handler: str) -> Any:
    """The object the code binds to ``handler`` (a plain function, or a decorated shoal.Function).

    Code that travels by value (pickles, and the driver's script: ``by_value``) is unpickled, never
    run; other source code is run as a module once per process (see ``_module_for``).
    """
    if code.kind == "pickle":
        return _unpickled(code.text)
    if code.by_value:
        return _unpickled(code.by_value, code)
    module = _module_for(code)
    obj: Any = module
    for part in handler.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            stopped = getattr(module, "__shoal_stopped__", None)
            note = f"; its loading stopped at {stopped}, so define the handler above that line" if stopped else ""
            raise CodeError(f"handler {handler!r} not found in {code.origin or 'the function code'}{note}") from None
    return obj


def _unpickled(text: str, code: Code | None = None) -> Any:
    try:
        if code is None:
            return unpickled(text)
        # tracebacks show the file's lines even where the file is not
        return unpickled(text, code.origin, lambda: _cache_lines(code, code.origin or ""))
    except Exception as exc:  # noqa: BLE001 - cloudpickle raises many kinds
        raise CodeError(f"cannot unpickle the function's code: {type(exc).__name__}: {exc}") from None


def _unwrap(obj: Any) -> Callable:
    inner = getattr(obj, "__shoal_callable__", None)
    obj = inner if inner is not None else obj
    if not callable(obj):
        raise CodeError(f"handler {obj!r} is not callable")
    return obj


def _module_for(code: Code) -> types.ModuleType:
    key = code.fingerprint
    with _modules_lock:
        module = _modules.get(key)
        if module is not None:
            return module
        name = f"{LOADED_PREFIX}{key[:16]}"
        filename = code.origin or f"<shoal:{key[:12]}>"
        tree = parse(code.text, filename, code.first_line)
        module = types.ModuleType(name)
        module.__file__ = filename
        _cache_lines(code, filename)
        sys.modules[name] = module
        _modules[key] = module  # like a Python import: a circular load sees the partly run module
        loading = _loading.__dict__.setdefault("files", [])
        loading.append(filename)
        try:
            # dont_inherit: the file's own __future__ imports only, not this module's (its
            # ``annotations`` import would turn the handler's type hints into strings)
            program = compile(tree, filename, "exec", dont_inherit=True)
            exec(program, module.__dict__)  # noqa: S102 - running user code is the job
        except LoadStopped as stop:
            _stopped(module, filename, stop)
        except BaseException as exc:
            sys.modules.pop(name, None)
            _modules.pop(key, None)
            raise CodeError(f"loading {filename} failed: {type(exc).__name__}: {exc}") from exc
        finally:
            loading.pop()
        return module


def _cache_lines(code: Code, filename: str) -> None:
    """Give ``linecache`` the shipped text when ``filename`` is not on this machine."""
    if filename and not os.path.isfile(filename):
        padded = "\n" * (code.first_line - 1) + code.text
        lines = [line + "\n" for line in source_lines(padded)]  # numbered as the compiler does
        linecache.cache[filename] = (len(padded), None, lines, filename)


# -- no runs while shipped code loads --------------------------------------------------------------------
_loading = threading.local()  # .files: the files this thread is loading as function code, innermost last


class LoadStopped(BaseException):
    """Raised by a run started (``fn.run/submit/map``, ``shoal.tune``) while this thread loads a file as
    a function's code; the load ends there. A BaseException, so ``except Exception`` in the user's
    top-level code does not carry on past it."""


def refuse_runs_while_loading() -> None:
    """Called by every driver entry point: loading a function's file (on a worker, or in the driver
    by ``Function.from_file``) must never start runs, or each worker would start its own
    (nested maps deadlock). The file's top level stops at that call; what it defined above stays."""
    files = getattr(_loading, "files", None)
    if files:
        raise LoadStopped(files[-1])


def _stopped(module: types.ModuleType, filename: str, stop: LoadStopped) -> None:
    """Keep the partly loaded module and say, once per process and file, where and why it stopped."""
    tb, line = stop.__traceback__, None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename and tb.tb_frame.f_globals is module.__dict__:
            line = tb.tb_lineno
        tb = tb.tb_next
    where = f"line {line}" if line else "a top-level call"
    text = linecache.getline(filename, line).strip() if line else ""
    stopped = vars(module)["__shoal_stopped__"] = f"{where} ({text})" if text else where
    message = (
        f"stopped loading {filename} at {stopped}: a file loaded as a function's code "
        "(by Function.from_file, `shoal run FILE:HANDLER` or a worker) starts no runs; what it defines "
        'above that line is used. Put the script\'s runs under `if __name__ == "__main__":` to silence this.'
    )
    if logcapture.current() is not None:  # loading for a run (a worker): into that run's log
        print(f"shoal: {message}", file=sys.stderr)
    else:
        log.warning("%s", message)
