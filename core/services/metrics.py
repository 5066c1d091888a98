"""Request metrics of one replica: counted in memory, written in batches per interval.

Requests are not runs, so none of them touches the database: ``observe`` appends a latency under a
lock, and a daemon thread hands one row per interval (count, errors, p50/p95/p99/max latency) with
the interval's failed requests (bounded) to ``shoal.store.services``. A replica that cannot reach
the project's database (a remote cluster and a SQLite file) logs that once and keeps serving.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

log = logging.getLogger("shoal.services")

INTERVAL_S = 5.0
ERRORS_PER_INTERVAL = 10  # failed requests kept per interval; the store keeps the newest few tens


@dataclass(frozen=True)
class MetricsTarget:
    """Where a replica writes: the project's database and name, and the service's name and version."""

    database: str
    project: str
    service: str
    function_hash: str
    interval_s: float = INTERVAL_S


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


class RequestMetrics:
    """Latencies and errors of one replica, flushed every ``interval_s`` by a thread of its own."""

    def __init__(self, target: MetricsTarget, replica: str) -> None:
        self.target = target
        self.replica = replica
        self._lock = threading.Lock()
        self._latencies: list[float] = []
        self._errors = 0
        self._failed: list[dict[str, Any]] = []
        self._since = time.time()
        self._stop = threading.Event()
        self._records: Any = None  # ServiceRecords, opened by the flush thread
        self._store: Any = None
        self._broken = False
        self._thread = threading.Thread(target=self._loop, name="shoal-service-metrics", daemon=True)
        self._thread.start()

    def observe(self, seconds: float, status: int, failure: dict[str, Any] | None = None) -> None:
        """One answered request; ``failure`` (request_id, type, message, traceback) for errors."""
        with self._lock:
            self._latencies.append(seconds)
            if status >= 500 or failure is not None:
                self._errors += 1
                if failure is not None and len(self._failed) < ERRORS_PER_INTERVAL:
                    self._failed.append({**failure, "status": status, "time": datetime.now(timezone.utc)})

    def _take(self) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        now = time.time()
        with self._lock:
            latencies, errors, failed, since = self._latencies, self._errors, self._failed, self._since
            self._latencies, self._errors, self._failed, self._since = [], 0, [], now
        if not latencies and not failed:
            return None, []
        ordered = sorted(latencies)
        row = {
            "replica": self.replica,
            "function_hash": self.target.function_hash,
            "started_at": datetime.fromtimestamp(since, timezone.utc),
            "ended_at": datetime.fromtimestamp(now, timezone.utc),
            "requests": len(latencies),
            "errors": errors,
            "p50_ms": percentile(ordered, 0.50) * 1000 if ordered else None,
            "p95_ms": percentile(ordered, 0.95) * 1000 if ordered else None,
            "p99_ms": percentile(ordered, 0.99) * 1000 if ordered else None,
            "max_ms": ordered[-1] * 1000 if ordered else None,
        }
        base = {"replica": self.replica, "function_hash": self.target.function_hash}
        return row, [{**base, **item} for item in failed]

    def flush(self) -> None:
        """Write what was counted since the last flush (nothing when no request came)."""
        row, failed = self._take()
        if row is None or self._broken:
            return
        try:
            records = self._open()
            records.record_requests(self.target.service, [row], failed)
        except Exception as exc:  # noqa: BLE001 - metrics must never stop a service
            self._broken = True
            log.warning("service %s: request metrics are not recorded: %s", self.target.service, exc)

    def _open(self) -> Any:
        if self._records is None:
            from ..store import Store
            from ..store.services import ServiceRecords

            self._store = Store(self.target.database, project=self.target.project)
            self._records = ServiceRecords(self._store)
        return self._records

    def _loop(self) -> None:
        while not self._stop.wait(self.target.interval_s):
            self.flush()

    def close(self) -> None:
        """Write the last interval and stop the thread."""
        self._stop.set()
        self._thread.join(timeout=self.target.interval_s + 5)
        self.flush()
        if self._store is not None:
            self._store.close()
