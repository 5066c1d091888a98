"""Per-run capture of stdout/stderr, bounded, safe with several runs in threads of one process.

``sys.stdout``/``sys.stderr`` are replaced once by a router that sends each thread's writes to that
thread's active capture (if any) and to the real stream otherwise.
"""

from __future__ import annotations

import io
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

DEFAULT_LIMIT = 1 << 20  # bytes of log kept per run (the tail)

_local = threading.local()
_install_lock = threading.Lock()


class BoundedLog:
    """Keeps the last ``limit`` characters and counts what was dropped; ``secrets`` are values
    replaced by ``****`` wherever they appear (also across two writes)."""

    __slots__ = ("limit", "secrets", "_parts", "_size", "dropped")  # one per run: small and quick to make

    def __init__(self, limit: int = DEFAULT_LIMIT, secrets: tuple[str, ...] = ()):
        self.limit = limit
        self.secrets = secrets
        self._parts: list[str] = []
        self._size = 0
        self.dropped = 0

    def write(self, text: str) -> None:
        self._parts.append(text)
        self._size += len(text)
        if self._size > 2 * self.limit:
            self._trim()

    def mask(self, text: str) -> str:
        if not self.secrets:
            return text
        from .secrets import mask

        return mask(text, self.secrets)

    def _trim(self) -> None:
        joined = self.mask("".join(self._parts))
        cut = max(0, len(joined) - self.limit)
        self.dropped += cut
        self._parts = [joined[cut:]]
        self._size = len(self._parts[0])

    def getvalue(self) -> str:
        """The kept tail, with a note of what was dropped; NUL characters are replaced because
        PostgreSQL text columns cannot hold them."""
        if not self._parts and not self.dropped:  # most short runs print nothing
            return ""
        self._trim()
        text = self._parts[0] if self._parts else ""
        if self.dropped:
            text = f"{dropped_note(self.dropped)}{text}"
        return text.replace("\x00", "\ufffd")


def dropped_note(count: int) -> str:
    return f"[... {count} earlier characters dropped ...]\n"


def tail(text: str, limit: int = DEFAULT_LIMIT) -> str:
    """``text`` cut to its last ``limit`` characters (with the same note as BoundedLog)."""
    if len(text) <= limit:
        return text
    return dropped_note(len(text) - limit) + text[-limit:]


class _Router(io.TextIOBase):
    def __init__(self, real: TextIO, stream: str):
        self.real = real
        self.stream = stream

    def _targets(self):
        return getattr(_local, "captures", None)

    def write(self, text: str) -> int:
        if not isinstance(text, str):  # as a real text stream; bytes would break the captured log
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        captures = self._targets()
        if captures:
            log, echo = captures[-1]
            log.write(text)
            if echo:
                sink = _echo_sink
                if sink is None:
                    self.real.write(log.mask(text))
                else:
                    sink(self.stream, log.mask(text))
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
    def encoding(self):
        return getattr(self.real, "encoding", "utf-8")

    def __getattr__(self, name: str):
        # Anything else (``buffer``, ``errors``, ``reconfigure``...) is the real stream's, so code that
        # reaches past the text layer keeps working (its bytes are not captured).
        return getattr(self.real, name)


#: Where echoed output of watched runs goes instead of this process's real stdout/stderr: a
#: ``sink(stream, text)`` set by an engine whose workers' own output does not reach the user (Ray).
_echo_sink: Callable[[str, str], None] | None = None


@contextmanager
def echo_to(sink: Callable[[str, str], None] | None) -> Iterator[None]:
    """Send the echo of watched runs in this process to ``sink`` (None: the real streams) while inside."""
    global _echo_sink
    saved, _echo_sink = _echo_sink, sink
    try:
        yield
    finally:
        _echo_sink = saved


def _install() -> None:
    if isinstance(sys.stdout, _Router) and isinstance(sys.stderr, _Router):
        return
    with _install_lock:
        if not isinstance(sys.stdout, _Router):
            sys.stdout = _Router(sys.stdout, "stdout")
        if not isinstance(sys.stderr, _Router):
            sys.stderr = _Router(sys.stderr, "stderr")


def capture_output(limit: int = DEFAULT_LIMIT, echo: bool = False, secrets: tuple[str, ...] = ()) -> _Capturing:
    """Capture this thread's stdout and stderr into a BoundedLog (echoing to the terminal if asked),
    with the run's secret values masked; use it as ``with capture_output(...) as log``."""
    return _Capturing((BoundedLog(limit, secrets), echo))


class _Capturing:
    """``attach`` as a plain class: entered once per run, where a generator's cost shows."""

    def __init__(self, capture: Capture):
        self.capture = capture

    def __enter__(self) -> BoundedLog:
        push(self.capture)
        return self.capture[0]

    def __exit__(self, *exc: object) -> None:
        _local.captures.pop()


def push(capture: Capture) -> None:
    """Send this thread's output to ``capture`` until ``pop()``: ``capture_output`` without its
    context manager, for ``execute``'s per-run path (pair it with ``pop`` in a ``finally``)."""
    if not (type(sys.stdout) is _Router and type(sys.stderr) is _Router):
        _install()
    try:
        _local.captures.append(capture)
    except AttributeError:
        _local.captures = [capture]


def pop() -> None:
    """End the capture ``push`` began in this thread."""
    _local.captures.pop()


Capture = tuple[BoundedLog, bool]


def current() -> Capture | None:
    """This thread's active capture (log, echo), to hand to a helper thread with ``attach``."""
    stack = getattr(_local, "captures", None)
    return stack[-1] if stack else None


@contextmanager
def attach(capture: Capture | None) -> Iterator[None]:
    """Send this thread's output to ``capture`` (a no-op for None)."""
    if capture is None:
        yield
        return
    _install()
    stack = getattr(_local, "captures", None)
    if stack is None:
        stack = _local.captures = []
    stack.append(capture)
    try:
        yield
    finally:
        stack.pop()
