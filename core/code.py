"""Capturing a handler's code so workers can rebuild it without the user's checkout.

Functions from real files ship the whole source file (``# shoal: ignore`` drops a line,
``# shoal: start-code`` / ``# shoal: end-code`` keep only a region). Functions whose file is not
available or does not define them at module level (the plain REPL, notebook cells, closures,
lambdas, functions defined under ``if __name__ == "__main__":``) ship by value with cloudpickle.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import inspect
import io
import linecache
import os
import pickle
import re
import sys
import threading
import tokenize
import types
from dataclasses import dataclass
from typing import Any, Callable, Literal

from .errors import CodeError

IGNORE_MARK = "# shoal: ignore"
START_MARK = "# shoal: start-code"
END_MARK = "# shoal: end-code"
IGNORE_COMMENT = re.compile(r"#\s*shoal:\s*ignore\b")  # also "#shoal:ignore" and "# shoal: ignore (why)"


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
    def from_dict(cls, data: dict[str, Any]) -> "Code":
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


def source_lines(text: str) -> list[str]:
    """Split like Python does (only \\n, \\r\\n, \\r): ``str.splitlines`` also splits on form feeds
    and U+2028, which would shift line numbers or cut string literals."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return lines[:-1] if lines and lines[-1] == "" else lines


def _ignored_lines(lines: list[str]) -> set[int]:
    """Indexes of lines with a ``# shoal: ignore`` comment (a real comment, not text in a string)."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO("\n".join(lines) + "\n").readline))
    except (tokenize.TokenError, SyntaxError):  # unfinished code: fall back to a plain text search
        return {i for i, line in enumerate(lines) if IGNORE_COMMENT.search(line)}
    return {t.start[0] - 1 for t in tokens if t.type == tokenize.COMMENT and IGNORE_COMMENT.match(t.string)}


def apply_annotations(text: str) -> tuple[str, int]:
    """Honour the shoal comments; return the kept text and the line number it starts at."""
    lines = source_lines(text)
    first = 1
    starts = [i for i, line in enumerate(lines) if line.strip() == START_MARK]
    if starts:
        start = starts[0] + 1
        ends = [i for i, line in enumerate(lines) if line.strip() == END_MARK and i >= start]
        end = ends[0] if ends else len(lines)
        lines = lines[start:end]
        first = start + 1
    ignored = _ignored_lines(lines)
    kept = ["" if i in ignored else line for i, line in enumerate(lines)]  # blank, so line numbers hold
    return "\n".join(kept) + "\n", first


def source_from_file(path: str | os.PathLike, handler: str) -> Code:
    """Read ``path``, apply annotations and check that ``handler`` is defined at its top level."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.isfile(path):
        raise CodeError(f"file not found: {path}; check the path (relative paths start at the working folder)")
    try:
        with tokenize.open(path) as handle:  # honours a BOM and a "# -*- coding: ... -*-" line, like Python
            raw = handle.read()
    except (OSError, UnicodeDecodeError, SyntaxError) as exc:
        raise CodeError(f"cannot read {path}: {exc}; save it as UTF-8") from None
    return _checked_source(raw, handler, path)


def _checked_source(raw: str, handler: str, origin: str) -> Code:
    text, first = apply_annotations(raw)
    tree = _parse(text, origin, first)
    top = handler.split(".")[0]
    names = _defined_names(tree.body)
    if top not in names:
        defined = sorted(n for n in names if not n.startswith("_"))
        hint = f"; it defines: {', '.join(defined)}" if defined else ""
        raise CodeError(f"handler {handler!r} not found in {origin}{hint}")
    return Code(kind="source", text=text, origin=origin, first_line=first)


def _parse(text: str, origin: str, first_line: int) -> ast.Module:
    try:
        tree = ast.parse(text, filename=origin)
    except SyntaxError as exc:
        line = (exc.lineno or 1) + first_line - 1
        raise CodeError(f"syntax error in {origin} line {line}: {exc.msg}") from None
    if first_line != 1:
        ast.increment_lineno(tree, first_line - 1)
    return tree


def _defined_names(body: list[ast.stmt]) -> set[str]:
    """Module-level names the code binds when a worker runs it as a module (not as ``__main__``):
    also inside ``if``/``try``/``with``/loops, but not inside ``if __name__ == "__main__":``."""
    names: set[str] = set()
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                names |= _target_names(target)
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign, ast.For, ast.AsyncFor)):
            names |= _target_names(node.target)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.With, ast.AsyncWith)):
            for item in node.items:
                names |= _target_names(item.optional_vars) if item.optional_vars else set()
        if isinstance(node, ast.If) and _is_main_guard(node):
            names |= _defined_names(node.orelse)
        elif not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            for field in ("body", "orelse", "finalbody"):
                names |= _defined_names(getattr(node, field, None) or [])
            for handler in getattr(node, "handlers", None) or []:
                names |= _defined_names(handler.body)
    return names


def _target_names(target: ast.expr) -> set[str]:
    if isinstance(target, ast.Name):
        return {target.id}
    if isinstance(target, (ast.Tuple, ast.List)):
        return set().union(*(_target_names(t) for t in target.elts))
    if isinstance(target, ast.Starred):
        return _target_names(target.value)
    return set()  # attributes and subscripts bind no module name


def _is_main_guard(node: ast.If) -> bool:
    test = node.test
    if not (isinstance(test, ast.Compare) and len(test.comparators) == 1):
        return False
    sides = {ast.unparse(test.left), ast.unparse(test.comparators[0])}
    return sides == {"__name__", "'__main__'"}


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
            return source_from_file(path, qualname)
        except CodeError:
            pass  # the file (as it is now) does not define it where a worker can find it
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


_modules: dict[str, types.ModuleType] = {}
# Re-entrant: shipped code may build or call other shipped functions while it loads (a pipeline file
# doing ``shoal.Function.from_file("prep.py", "prep")`` at its top level); a plain Lock deadlocked.
_modules_lock = threading.RLock()


def load_handler(code: Code, handler: str) -> Callable:
    """Rebuild the handler from shipped code (cached per code fingerprint in this process)."""
    return _unwrap(load_object(code, handler))


def load_object(code: Code, handler: str) -> Any:
    """The object the code binds to ``handler`` (a plain function, or a decorated shoal.Function)."""
    if code.kind == "pickle":
        import cloudpickle

        try:
            return cloudpickle.loads(base64.b64decode(code.text))
        except Exception as exc:  # noqa: BLE001
            raise CodeError(f"cannot unpickle the function's code: {exc}") from None
    obj: Any = _module_for(code)
    for part in handler.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise CodeError(f"handler {handler!r} not found in {code.origin or 'the function code'}") from None
    return obj


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
        name = f"shoal_code_{key[:16]}"
        filename = code.origin or f"<shoal:{key[:12]}>"
        tree = _parse(code.text, filename, code.first_line)
        module = types.ModuleType(name)
        module.__file__ = filename
        if not os.path.isfile(filename):
            padded = "\n" * (code.first_line - 1) + code.text
            lines = [line + "\n" for line in source_lines(padded)]  # numbered as the compiler does
            linecache.cache[filename] = (len(padded), None, lines, filename)
        sys.modules[name] = module
        _modules[key] = module  # like a Python import: a circular load sees the partly run module
        try:
            exec(compile(tree, filename, "exec"), module.__dict__)  # noqa: S102 - running user code is the job
        except BaseException as exc:
            sys.modules.pop(name, None)
            _modules.pop(key, None)
            raise CodeError(f"loading {filename} failed: {type(exc).__name__}: {exc}") from exc
        return module
