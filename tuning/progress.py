"""What a running search reports: the counts its ``progress`` callback gets after every change."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class Progress:
    """Counts shown while a search runs (passed to the ``progress`` callback after every change)."""

    study: str
    n_trials: int | None
    done: int = 0  # finished trials of the study, earlier sessions included
    running: int = 0
    completed: int = 0  # finished in this session, by state
    pruned: int = 0
    failed: int = 0
    best_value: float | None = None
    best_trial: int | None = None
    started: float = field(default_factory=time.monotonic)
