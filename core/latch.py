"""``Latch``: a one-shot flag threads can wait on, as ``threading.Event`` but cheap until waited on.

Why: every run in flight has a handle and an engine future, each with a done flag. An Event is a
Condition, a deque and a dozen bound methods; a map of 20,000 runs made 40,000 of them, and the
garbage collector walked them all, again and again, while the map ran (measured: most of the
driver's per-run cost of a batched map). A Latch is one small object; the Event behind it is made
only when a thread waits before the flag is set, which for most runs of a map never happens.
"""

from __future__ import annotations

import threading

# One lock for every latch: held only to set a flag or to create a waiter, never while waiting.
_lock = threading.Lock()


class Latch:
    """A flag set once; ``wait`` blocks until it is set (the ``threading.Event`` calls, minus ``clear``)."""

    __slots__ = ("_set", "_event")

    def __init__(self) -> None:
        self._set = False
        self._event: threading.Event | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        with _lock:
            self._set = True
            event = self._event
        if event is not None:
            event.set()

    def wait(self, timeout: float | None = None) -> bool:
        """True once set; False if ``timeout`` (seconds) passed first."""
        if self._set:
            return True
        with _lock:
            if self._set:
                return True
            if self._event is None:
                self._event = threading.Event()
            event = self._event
        return event.wait(timeout)


__all__ = ["Latch"]
