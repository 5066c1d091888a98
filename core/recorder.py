"""Writes run starts and outcomes to the store from one background thread, in batches.

Engines call back from their own threads (Dask's event loop, Ray's, local worker threads); none of
them should wait on the database. The recorder drains whatever has queued up and writes it in one
transaction, so a burst of 1,000 finished runs costs a few commits, not 1,000. A handle resolves only
after its outcome is committed; the queue is flushed at interpreter exit.
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
import weakref
from dataclasses import dataclass
from typing import Any, Callable

log = logging.getLogger("shoal.recorder")
MAX_BATCH = 500
IDLE_EXIT = 10.0  # seconds without work after which the writer thread ends


@dataclass
class _Item:
    uid: str
    fields: dict[str, Any]
    artifacts: list[dict] | None  # None: a start (fields only); list: a final outcome
    then: Callable[[Exception | None], None] | None = None


class Recorder:
    def __init__(self, store):
        self._store = store
        self._queue: queue.Queue[_Item] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        _recorders.add(self)

    def started(self, uid: str, fields: dict[str, Any]) -> None:
        self._enqueue(_Item(uid, fields, None))

    def finished(
        self, uid: str, fields: dict[str, Any], artifacts: list[dict], then: Callable[[Exception | None], None]
    ) -> None:
        self._enqueue(_Item(uid, fields, list(artifacts), then))

    def _enqueue(self, item: _Item) -> None:
        with self._lock:  # with _loop's exit check: an item is never left without a thread
            self._queue.put(item)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="shoal-recorder", daemon=True)
                self._thread.start()

    def flush(self) -> None:
        """Block until everything queued so far is written."""
        if self._thread is not None and self._thread.is_alive():
            self._queue.join()

    def _loop(self) -> None:
        """Write batches until the queue has been empty for IDLE_EXIT seconds, then end the thread
        (the next run starts a new one), so closed projects leave no thread behind."""
        while True:
            try:
                first = self._queue.get(timeout=IDLE_EXIT)
            except queue.Empty:
                with self._lock:
                    if self._queue.empty():
                        self._thread = None
                        return
                continue
            batch = [first]
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                self._write(batch)
            except Exception:  # noqa: BLE001 - never let the thread die with handles waiting on it
                log.exception("recording a batch of %d runs failed", len(batch))
            finally:
                for _ in batch:
                    self._queue.task_done()

    def _write(self, batch: list[_Item]) -> None:
        finished = {item.uid for item in batch if item.artifacts is not None}
        # A start that is already overtaken by its end in the same batch is not worth a write.
        items = [item for item in batch if item.artifacts is not None or item.uid not in finished]
        error: Exception | None = None
        try:
            self._store.finish_runs([(item.uid, item.fields, item.artifacts or []) for item in items])
        except Exception as exc:  # noqa: BLE001 - retry one by one so one bad record spoils nothing else
            log.warning("batch write failed (%s); writing runs one by one", exc)
            error = exc
        for item in items:
            problem = None if error is None else self._write_one(item)
            if item.then is not None:
                try:
                    item.then(problem)
                except Exception:  # noqa: BLE001 - a user callback must not stop the recorder
                    log.exception("run callback failed")


    def _write_one(self, item: _Item) -> Exception | None:
        """Write one item; if a final outcome cannot be written, record at least that the run ended
        (failed, saying why), so it is never left looking pending or running."""
        try:
            self._store.finish_run(item.uid, item.fields, item.artifacts or [])
            return None
        except Exception as exc:  # noqa: BLE001
            log.error("could not record run %s: %s", item.uid, exc)
            if item.artifacts is not None:
                try:
                    self._store.finish_run(item.uid, unrecordable(item.fields, exc), [])
                except Exception as again:  # noqa: BLE001
                    log.error("could not record even the failure of run %s: %s", item.uid, again)
            return exc


def unrecordable(fields: dict[str, Any], problem: Exception) -> dict[str, Any]:
    """What is recorded instead of an outcome the store refused: a failed run saying why."""
    return {
        "state": "failed",
        "error": {
            "type": type(problem).__name__,
            "message": f"the run ended {fields.get('state')} but its outcome could not be recorded: {problem}",
            "traceback": "",
        },
        "results": {},
        "metrics": {},
        "logs": "",
        "attempts": fields.get("attempts", 0),
        "started_at": fields.get("started_at"),
        "ended_at": fields.get("ended_at"),
    }


_recorders: "weakref.WeakSet[Recorder]" = weakref.WeakSet()


@atexit.register
def _flush_all() -> None:
    for recorder in list(_recorders):
        try:
            recorder.flush()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass
