"""Per-run capture of stdout/stderr, bounded, safe with several runs in threads of one process.

``sys.stdout``/``sys.stderr`` are replaced once by a router that sends each thread's writes to that
thread's active capture (if any) and to the real stream otherwise.
"""

from __future__ import annotations

import io
import sys
import threading
from contextlib import contextmanager
from typing import Iterator, TextIO

DEFAULT_LIMIT = 1 << 20  # bytes of log kept per run (the tail)

_local = threading.local()
_install_lock = threading.Lock()


class BoundedLog:
    """Keeps the last ``limit`` characters and counts what was dropped."""

    def __init__(self, limit: int = DEFAULT_LIMIT):
        self.limit = limit
        self._parts: list[str] = []
        self._size = 0
        self.dropped = 0

    def write(self, text: str) -> None:
        self._parts.append(text)
        self._size += len(text)
        if self._size > 2 * self.limit:
            self._trim()

    def _trim(self) -> None:
        joined = "".join(self._parts)
        cut = max(0, len(joined) - self.limit)
        self.dropped += cut
        self._parts = [joined[cut:]]
        self._size = len(self._parts[0])

    def getvalue(self) -> str:
        self._trim()
        text = self._parts[0] if self._parts else ""
        if self.dropped:
            return f"[... {self.dropped} earlier characters dropped ...]\n{text}"
        return text


class _Router(io.TextIOBase):
    def __init__(self, real: TextIO, stream: str):
        self.real = real
        self.stream = stream

    def _targets(self):
        return getattr(_local, "captures", None)

    def write(self, text: str) -> int:
        captures = self._targets()
        if captures:
            log, echo = captures[-1]
            log.write(text)
            if echo:
                self.real.write(text)
        else:
            self.real.write(text)
        return len(text)

    def flush(self) -> None:
        self.real.flush()

    def isatty(self) -> bool:
        return self.real.isatty()

    def fileno(self) -> int:
        return self.real.fileno()

    @property
    def encoding(self):  # type: ignore[override]
        return getattr(self.real, "encoding", "utf-8")


def _install() -> None:
    with _install_lock:
        if not isinstance(sys.stdout, _Router):
            sys.stdout = _Router(sys.stdout, "stdout")
        if not isinstance(sys.stderr, _Router):
            sys.stderr = _Router(sys.stderr, "stderr")


@contextmanager
def capture_output(limit: int = DEFAULT_LIMIT, echo: bool = False) -> Iterator[BoundedLog]:
    """Capture this thread's stdout and stderr into a BoundedLog (echoing to the terminal if asked)."""
    _install()
    log = BoundedLog(limit)
    stack = getattr(_local, "captures", None)
    if stack is None:
        stack = _local.captures = []
    stack.append((log, echo))
    try:
        yield log
    finally:
        stack.pop()
