"""How many runs of a map travel together in one engine task.

Engines charge a fixed cost per task (measured here: ~1 ms on Ray, ~3 ms on the embedded Dask),
so a map of runs shorter than that spends most of its time on dispatch. As joblib's
``batch_size="auto"``, a map first sends one run per slot, learns from them how long a run takes,
and sends the rest in batches of about ``BATCH_SECONDS`` of work, never fewer than
``BATCHES_PER_SLOT`` batches per slot so the work stays balanced. Runs that take longer than half
of ``BATCH_SECONDS``, or that are not done within ``PROBE_WAIT``, go one per task as before.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, TypeVar

from .errors import ParamError

PROBE_WAIT = 1.0  # seconds a map waits for its first runs (they occupy every slot meanwhile)
BATCH_SECONDS = 0.1  # work one engine task should carry when runs are short
BATCHES_PER_SLOT = 4  # at least this many tasks per slot, so no worker idles while one finishes
MAX_RUNS_PER_TASK = 1000  # runs one engine task carries, however short they are

T = TypeVar("T")


def checked_batch_size(value: Any) -> int | str:
    """``"auto"`` or a whole number >= 1 (1: one run per engine task)."""
    if value == "auto":
        return "auto"
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ParamError(f"batch_size must be 'auto' or a whole number >= 1 (1 sends one run per task), got {value!r}")
    return value


def worth_batching(runs: int, slots: int) -> bool:
    """Enough runs for several batches per slot after the probes."""
    return runs > max(1, slots) * (BATCHES_PER_SLOT + 1)


def batch_size(durations: Sequence[float], remaining: int | None, slots: int) -> int:
    """Runs per engine task for ``remaining`` runs (None: no known end, as a search bounded only by
    its timeout), given the durations (s) of runs already done."""
    if not durations or (remaining is not None and remaining <= 0):
        return 1
    typical = max(sum(durations) / len(durations), 1e-5)
    size = min(int(BATCH_SECONDS / typical), MAX_RUNS_PER_TASK)
    if remaining is not None:  # smaller batches towards the end keep every slot busy to the last
        size = min(size, math.ceil(remaining / (max(1, slots) * BATCHES_PER_SLOT)))
    return max(1, size)


def chunks(items: Sequence[T], size: int) -> list[list[T]]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]
