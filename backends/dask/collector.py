"""The collector of the ``dask`` backend: one thread that fetches finished outcomes in batches and
resolves their futures (where the runner's recording and retries then run)."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from .future import DaskFuture

MAX_OUTCOMES_PER_GATHER = 1000  # finished futures the collector fetches with one gather
STOP_WAIT = 3.0  # seconds stop() waits for what is queued to be settled
# While many tasks are in flight (more are sure to finish soon), a gather waits up to LINGER for
# more finished ones: each gather is a round trip through the scheduler (or to each worker), and a
# stream of 2,000 no-op runs otherwise paid ~500 of them (measured here), four runs each.
LINGER = 0.02
LINGER_MIN_IN_FLIGHT = 16  # ... not with few in flight (a search of parallelism 2 waits on each one)

log = logging.getLogger("shoal.backends.dask")


class Collector:
    """Fetches the outcomes of finished tasks in batches and resolves their futures.

    Dask runs every done-callback on one thread; fetching each outcome there costs a round trip per
    run. Here one ``gather`` fetches all that finished meanwhile. Callbacks of the resolved futures
    (the runner's recording and retries) run on this collector's thread.
    """

    def __init__(self, client: Any, in_flight: Callable[[], int] = lambda: 0, direct: bool | None = None):
        """``in_flight()``: how many tasks are unfinished (the collector lingers while many are);
        ``direct``: gather straight from the workers (Dask's ``gather(direct=...)``; None: Dask's
        default, through the scheduler)."""
        self._client = client
        self._in_flight = in_flight
        self._direct = direct
        self._queue: queue.Queue[tuple[DaskFuture, Any] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="shoal-dask-collector", daemon=True)
        self._thread.start()

    def put(self, future: DaskFuture, dask_future: Any) -> None:
        self._queue.put((future, dask_future))

    def stop(self) -> None:
        """Settle what is queued, then end the thread (not waited for when called from it)."""
        self._queue.put(None)
        if threading.current_thread() is not self._thread:
            self._thread.join(STOP_WAIT)

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self._settle(batch)

    def _next_batch(self) -> list[tuple[DaskFuture, Any]] | None:
        first = self._queue.get()
        if first is None:
            return None
        batch = [first]
        deadline = time.monotonic() + LINGER
        while len(batch) < MAX_OUTCOMES_PER_GATHER:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                left = deadline - time.monotonic()
                if left <= 0 or self._in_flight() < LINGER_MIN_IN_FLIGHT:
                    break
                try:
                    item = self._queue.get(timeout=left)
                except queue.Empty:
                    break
            if item is None:
                self._queue.put(None)  # stop after this batch
                break
            batch.append(item)
        return batch

    def _settle(self, batch: list[tuple[DaskFuture, Any]]) -> None:
        finished = [(f, d) for f, d in batch if d.status == "finished"]
        try:
            values = self._client.gather([d for _, d in finished], direct=self._direct) if finished else []
        except Exception:  # noqa: BLE001 - one could not be fetched: fetch each on its own below
            finished, values = [], []
        gathered = {id(d): value for (_, d), value in zip(finished, values)}
        for future, dask_future in batch:
            try:
                future.settle(dask_future, gathered.get(id(dask_future)))
            except Exception:  # noqa: BLE001 - a failing callback must not stop the collector
                log.exception("settling run %s failed", future.uid)


__all__ = ["Collector", "MAX_OUTCOMES_PER_GATHER"]
