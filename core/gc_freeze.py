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

Full collections are also made rarer inside the block. After ``gc.freeze()`` CPython counts almost
no long-lived objects, so its quarter rule would fire a full collection each time the block's own
objects grow by a quarter: about ten walks of a 20,000-run map's objects, measured at 0.9-1.1 s of
a map's 2 s of driver CPU. Inside the block a full collection comes at most once per
``FULL_COLLECTION_EVERY`` young collections (still bounded, for long blocks that make cyclic
garbage); the application's threshold comes back when the block ends.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_depth = 0  # blocks inside older_objects_frozen, across threads
_ours = False  # the frozen objects were frozen here (not by the application, whose freeze is left alone)
# At most one full collection per this many generation-1 collections inside a block (CPython's
# default is 10): about 7 million net allocations at the default thresholds.
FULL_COLLECTION_EVERY = 1000
_saved_full_threshold: int | None = None  # the application's, while ours is in place


@contextmanager
def older_objects_frozen() -> Iterator[None]:
    """Leave the objects that exist now out of garbage collection until the outermost such block
    (of any thread) ends. A no-op where the application froze objects itself."""
    global _depth, _ours
    with _lock:
        if _depth == 0 and gc.get_freeze_count() == 0:
            gc.freeze()
            _ours = True
            _defer_full_collections()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _ours:
                gc.unfreeze()
                _ours = False
                _restore_full_collections()


def _defer_full_collections() -> None:
    global _saved_full_threshold
    young, middle, full = gc.get_threshold()
    if full < FULL_COLLECTION_EVERY:
        _saved_full_threshold = full
        gc.set_threshold(young, middle, FULL_COLLECTION_EVERY)


def _restore_full_collections() -> None:
    """Put the application's threshold back, unless it set one of its own meanwhile."""
    global _saved_full_threshold
    young, middle, full = gc.get_threshold()
    if _saved_full_threshold is not None and full == FULL_COLLECTION_EVERY:
        gc.set_threshold(young, middle, _saved_full_threshold)
    _saved_full_threshold = None


__all__ = ["older_objects_frozen"]
