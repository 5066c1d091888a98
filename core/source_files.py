"""Reading a handler's source file: the shoal comments that trim it, and the check that it
defines the handler at its top level (where a worker running it as a module finds it).

Driver side, when code is captured (``shoal.code.source_from_file``, ``capture``); ``parse`` also
on workers, where shipped source is compiled.
"""

from __future__ import annotations

import ast
import io
import os
import re
import tokenize

from .errors import CodeError

IGNORE_MARK = "# shoal: ignore"
START_MARK = "# shoal: start-code"
END_MARK = "# shoal: end-code"
IGNORE_COMMENT = re.compile(r"#\s*shoal:\s*ignore\b")  # also "#shoal:ignore" and "# shoal: ignore (why)"


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


def read_source(path: str) -> str:
    """The text of the source file ``path`` (an absolute path), decoded as Python decodes it."""
    if not os.path.isfile(path):
        raise CodeError(f"file not found: {path}; check the path (relative paths start at the working folder)")
    try:
        with tokenize.open(path) as handle:  # honours a BOM and a "# -*- coding: ... -*-" line, like Python
            return handle.read()
    except (OSError, UnicodeDecodeError, SyntaxError) as exc:
        raise CodeError(f"cannot read {path}: {exc}; save it as UTF-8") from None


def check_defined(tree: ast.Module, handler: str, origin: str) -> None:
    """Raise CodeError naming what the file defines when it does not bind ``handler`` at its top level."""
    top = handler.split(".")[0]
    names = _defined_names(tree.body)
    if top not in names:
        defined = sorted(  # what could be a handler: not the imports and constants it also binds
            node.name
            for node in tree.body
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and not node.name.startswith("_")
        )
        hint = f"; it defines: {', '.join(defined)}" if defined else "; it defines no function or class"
        raise CodeError(f"handler {handler!r} not found in {origin}{hint}")


def parse(text: str, origin: str, first_line: int) -> ast.Module:
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
