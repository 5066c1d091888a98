"""Garbage collection that passes over the objects older than a burst of work while it runs.

Why: CPython's full collection walks every tracked object of the process, and it runs whenever the
objects promoted since the last one exceed a quarter of those that survived it. A map's runs are
many short-lived objects (records, tasks, handles, futures, outcomes) that live for the whole map,
so a map of 2,000 runs set off several full collections, each walking the whole heap of the
driver (Dask, SQLAlchemy, the user's data), measured here at about half the driver's per-run cost.
Within ``older_objects_frozen()`` the objects that existed before it are in CPython's permanent
generation (``gc.freeze``): collections walk only what the work made. On leaving, they go back
(``gc.unfreeze``); garbage among them is collected then as it would have been, only later. Both
calls are constant time.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_depth = 0  # blocks inside older_objects_frozen, across threads
_ours = False  # the frozen objects were frozen here (not by the application, whose freeze is left alone)


@contextmanager
def older_objects_frozen() -> Iterator[None]:
    """Leave the objects that exist now out of garbage collection until the outermost such block
    (of any thread) ends. A no-op where the application froze objects itself."""
    global _depth, _ours
    with _lock:
        if _depth == 0 and gc.get_freeze_count() == 0:
            gc.freeze()
            _ours = True
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _ours:
                gc.unfreeze()
                _ours = False


__all__ = ["older_objects_frozen"]
