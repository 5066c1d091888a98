"""Capturing a handler's code so workers can rebuild it without the user's checkout.

Functions from real files ship the whole source file (``# shoal: ignore`` drops a line,
``# shoal: start-code`` / ``# shoal: end-code`` keep only a region). Functions whose file is not
available (the plain REPL, notebook cells, closures) ship by value with cloudpickle.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import inspect
import linecache
import os
import sys
import threading
import types
from dataclasses import dataclass
from typing import Any, Callable, Literal

from .errors import CodeError

IGNORE_MARK = "# shoal: ignore"
START_MARK = "# shoal: start-code"
END_MARK = "# shoal: end-code"


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
        return cls(
            kind=data["kind"],
            text=data["text"],
            origin=data.get("origin"),
            first_line=int(data.get("first_line", 1)),
            fingerprint_hint=data.get("fingerprint"),
        )


def apply_annotations(text: str) -> tuple[str, int]:
    """Honour the shoal comments; return the kept text and the line number it starts at."""
    lines = text.splitlines()
    first = 1
    starts = [i for i, line in enumerate(lines) if line.strip() == START_MARK]
    if starts:
        start = starts[0] + 1
        ends = [i for i, line in enumerate(lines) if line.strip() == END_MARK and i >= start]
        end = ends[0] if ends else len(lines)
        lines = lines[start:end]
        first = start + 1
    kept = ["" if line.rstrip().endswith(IGNORE_MARK) else line for line in lines]
    return "\n".join(kept) + "\n", first


def source_from_file(path: str | os.PathLike, handler: str) -> Code:
    """Read ``path``, apply annotations and check that ``handler`` is defined at its top level."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.isfile(path):
        raise CodeError(f"file not found: {path}; check the path (relative paths start at the working folder)")
    try:
        with open(path, encoding="utf-8") as handle:
            raw = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise CodeError(f"cannot read {path}: {exc}") from None
    return _checked_source(raw, handler, path)


def _checked_source(raw: str, handler: str, origin: str) -> Code:
    text, first = apply_annotations(raw)
    tree = _parse(text, origin, first)
    top = handler.split(".")[0]
    if top not in _top_level_names(tree):
        defined = sorted(n for n in _top_level_names(tree) if not n.startswith("_"))
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


def _top_level_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def capture(func: Callable) -> Code:
    """Capture the code of a live callable: its file when it has one, else the callable by value."""
    qualname = getattr(func, "__qualname__", "")
    path = None
    try:
        path = inspect.getsourcefile(func)
    except TypeError:
        pass
    if path and "<locals>" not in qualname and os.path.isfile(path):
        code = source_from_file(path, qualname)
        return code
    if path and "<locals>" not in qualname and linecache.getlines(path):
        # notebook cells and other in-memory sources kept in linecache
        try:
            return _checked_source("".join(linecache.getlines(path)), qualname, path)
        except CodeError:
            pass
    return _pickled(func)


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
    """A digest of a callable's bytecode and constants, equal across processes on one Python."""
    digest = hashlib.sha256(f"py{sys.version_info[0]}.{sys.version_info[1]}".encode())
    seen: set[int] = set()

    def feed_code(code: types.CodeType) -> None:
        digest.update(code.co_code)
        digest.update(repr(code.co_names).encode())
        digest.update(repr(code.co_varnames).encode())
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                feed_code(const)
            else:
                digest.update(repr(const).encode())

    def feed(obj: Any) -> None:
        target = getattr(obj, "__func__", obj)
        code = getattr(target, "__code__", None)
        if code is None or id(target) in seen:
            return
        seen.add(id(target))
        feed_code(code)
        digest.update(repr(getattr(target, "__defaults__", None)).encode())
        module_globals = getattr(target, "__globals__", {})
        for name in code.co_names:
            value = module_globals.get(name)
            if callable(value) and getattr(value, "__module__", None) == getattr(target, "__module__", None):
                feed(value)

    feed(func)
    return digest.hexdigest()


_modules: dict[str, types.ModuleType] = {}
_modules_lock = threading.Lock()


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
            linecache.cache[filename] = (len(padded), None, padded.splitlines(True), filename)
        sys.modules[name] = module
        try:
            exec(compile(tree, filename, "exec"), module.__dict__)  # noqa: S102 - running user code is the job
        except BaseException as exc:
            sys.modules.pop(name, None)
            raise CodeError(f"loading {filename} failed: {type(exc).__name__}: {exc}") from exc
        _modules[key] = module
        return module
