"""Waiting on a condition in tests: poll with a generous limit, fail with what was awaited.

Engines start workers and report starts asynchronously; a test waits for the event it needs rather
than sleeping a guessed time, and this limit is a safety net, never the thing under test.
"""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_for(condition: Callable[[], object], timeout: float = 60.0, what: str = "condition") -> None:
    """Poll ``condition`` until true; AssertionError naming ``what`` after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"{what} not reached within {timeout} s")
        time.sleep(0.02)
