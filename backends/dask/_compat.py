"""Every Dask API outside Dask's public, stable surface that shoal relies on, in one place.

Each function here names what it relies on and is pinned by ``tests/test_dask_compat.py``, so a
Dask upgrade that changes it breaks one named test instead of quietly losing what it serves.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def next_ready_call(worker: Any) -> tuple[Callable[..., Any], tuple[Any, ...]] | None:
    """The function and positional arguments of the task ``worker`` runs next (the head of its
    queue of tasks ready to run), or None when nothing is queued there or Dask holds that queue
    differently. Relies on ``Worker.state.ready`` (a heap of ``TaskState`` with ``peek()``) and on
    ``TaskState.run_spec`` being a ``dask`` ``Task`` with ``func`` and ``args``."""
    try:
        spec = worker.state.ready.peek().run_spec
        return spec.func, tuple(spec.args)
    except Exception:  # noqa: BLE001 - nothing queued, or Dask's state is not as this expects
        return None


__all__ = ["next_ready_call"]
