"""Writes run starts and outcomes to the store from one background thread, in batches.

Engines call back from their own threads (Dask's event loop, Ray's, local worker threads); none of
them should wait on the database. The recorder drains whatever has queued up and writes it in one
transaction, so a burst of 1,000 finished runs costs a few commits, not 1,000. A handle resolves only
after its outcome is committed; the queue is flushed at interpreter exit.

When outcomes come faster than one transaction writes them, the next batch takes all that has
queued meanwhile (up to MAX_WRITES_PER_TRANSACTION), so batches grow with the backlog and the writer
catches up; a backlog older than BACKLOG_WARN seconds is logged, never silent. What is still queued
when the process ends is written first: at interpreter exit (Ctrl-C included), and on SIGTERM, which
otherwise would end the process without running any exit handler (``shoal.recorder_exit``).

The recorder also persists the scaling events of the backends it is told to watch: it pulls them
after writing a batch (at most once per ``SCALING_PULL_INTERVAL``), when its thread goes idle, and on
every flush (so the last scale-down is stored at exit too). Nothing is pulled per run.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import recorder_exit

if TYPE_CHECKING:  # pragma: no cover
    from shoal.backends.base import Backend, ScalingEvent

    from .store.store import FinishItem, Store

log = logging.getLogger("shoal.recorder")
scaling_log = logging.getLogger("shoal.scaling")
# Most starts and outcomes the writer thread commits together: a batch is everything queued up to
# this, so a writer that fell behind catches up in big batches (on PostgreSQL a batch of 5,000 costs
# a COPY and one UPDATE, little more than a batch of 500).
MAX_WRITES_PER_TRANSACTION = 5000
BACKLOG_WARN = 5.0  # seconds an outcome waited before its batch was written: logged as falling behind
BACKLOG_WARN_EVERY = 60.0  # at most one such warning per this many seconds
IDLE_EXIT = 10.0  # seconds without work after which the writer thread ends
SCALING_PULL_INTERVAL = 1.0  # seconds between pulls of scaling events triggered by batches
START_DELAY = 0.5  # seconds before a start is written: runs that end sooner are never written "running"
# While outcomes are queued (the writer is behind) or many are due (a map is going), a due start waits
# this much longer: most are overtaken by their outcome, which spares a write per run (measured: a map
# of 20,000 short runs in batches wrote ~19,000 "running" states on a busy machine, doubling the
# writer's work; ~8,000 still when only a queued outcome deferred them).
START_GRACE_WHEN_BUSY = 3.0
# While more outcomes are on their way, a batch waits up to this long for them: a stream of 2,000
# short runs then costs a few dozen transactions instead of one per run (measured here: ~1,500
# transactions of 1-4 runs, each slower than the run itself, when every arrival was written at once;
# still ~500 when a gap of 10 ms between arrivals ended the wait, as on a busy machine they come
# further apart).
LINGER = 0.05
LINGER_SLICE = 0.005  # seconds between looks while lingering: arrivals are drained, not waited on one by one
LINGER_MIN_DUE = 16  # ... only with this many arrivals due (engine tasks, a batch's runs arriving
# together): a few tasks in flight (a tuning search of parallelism 2, whose tasks carry several trials,
# or a map in a few large batches) want each arrival written at once: the next task waits on it


@dataclass
class _Item:
    uid: str
    fields: dict[str, Any]
    artifacts: list[dict] | None  # None: a start (fields only); list: a final outcome
    then: Callable[[Exception | None], None] | None = None
    queued: float = 0.0  # time.monotonic() when it was handed over


def backend_label(backend: Backend) -> str:
    """How scaling events name a backend: its engine address if it has one, else its name."""
    return str(getattr(backend, "address", None) or backend.name)


def _event_key(event: ScalingEvent) -> tuple[float, str, str]:
    """What makes an event the same event again (the store's unique key, per backend)."""
    return (event.time, event.direction, event.reason)


@dataclass
class _Watch:
    """A watched backend and the keys of its events that are already persisted.

    The backend is held strongly until the project closes, so events of a backend the caller has
    already dropped still reach the database at the next flush.
    """

    backend: Backend
    label: str
    seen: set[tuple[float, str, str]] = field(default_factory=set)


class Recorder:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._queue: queue.Queue[_Item] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._watches: dict[int, _Watch] = {}
        self._scaling_lock = threading.Lock()  # one pull at a time (writer thread or a flush)
        self._next_pull = 0.0
        # uid -> (when due, fields), oldest first: every start waits the same START_DELAY, so
        # insertion order is due order and finding what is due never scans the whole map.
        self._expected = 0  # outcomes announced by expect() and not yet handed to finished()
        self._arrivals = 0.0  # ... counted as the engine tasks they arrive with (see ``batched``)
        self._starts: OrderedDict[str, tuple[float, dict[str, Any]]] = OrderedDict()
        self._ending: set[str] = set()  # uids whose outcome is queued: their start is not worth a write
        self._warned = float("-inf")  # when the last backlog warning was logged
        recorder_exit.register(self)

    def watch(self, backend: Backend) -> None:
        """Persist the scaling events ``backend`` reports from now on (idempotent, cheap)."""
        if id(backend) in self._watches:  # the common case (every driver calls this): no lock to wait on
            return
        with self._scaling_lock:
            self._watches.setdefault(id(backend), _Watch(backend, backend_label(backend)))

    def started(self, uid: str, fields: dict[str, Any]) -> None:
        """Note that a run started; written after START_DELAY unless its end comes first (a map of
        short runs then costs no "running" writes at all)."""
        with self._lock:
            self._starts.pop(uid, None)  # a retry's start goes to the back, in due order
            self._starts[uid] = (time.monotonic() + START_DELAY, fields)
            self._ensure_thread()

    def expect(self, count: int = 1) -> None:
        """Announce outcomes that will come through :meth:`finished` (runs just launched): while
        some are due, the writer lingers a moment to batch them; with none due it writes at once."""
        with self._lock:
            self._expected += count
            self._arrivals += count

    def batched(self, count: int) -> None:
        """``count`` of the runs announced travel in one engine task: their outcomes arrive together
        (each is handed to ``finished`` with ``share=1/count``)."""
        with self._lock:
            self._arrivals = max(0.0, self._arrivals - (count - 1))

    def finished(
        self,
        uid: str,
        fields: dict[str, Any],
        artifacts: list[dict],
        then: Callable[[Exception | None], None],
        share: float = 1.0,
    ) -> None:
        item = _Item(uid, fields, list(artifacts), then, time.monotonic())
        with self._lock:  # held with _loop's exit check: an item is never left without a thread
            self._expected = max(0, self._expected - 1)
            self._arrivals = max(0.0, self._arrivals - share)
            self._ending.add(uid)
            self._queue.put(item)
            self._ensure_thread()

    @property
    def hand_over_lock(self) -> threading.Lock:
        """Held while an outcome is handed over: whoever holds it knows nothing new gets queued."""
        return self._lock

    @property
    def unwritten(self) -> int:
        """How many outcomes and starts are queued or being written."""
        return self._queue.unfinished_tasks

    @property
    def outstanding(self) -> bool:
        """True while outcomes are announced, queued or being written, or starts wait to be written."""
        return bool(self._expected or self._queue.unfinished_tasks or self._starts)

    def _ensure_thread(self) -> None:
        """Start the writer thread if none runs (call with ``_lock`` held)."""
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name="shoal-recorder", daemon=True)
            self._thread.start()

    def _write_starts(self, due_only: bool, grace: float = 0.0) -> None:
        """Write the starts that are due (or all of them) for runs that have not ended yet; with
        ``grace``, only those due for that long already."""
        now = time.monotonic() - grace
        items: list[FinishItem] = []
        with self._lock:
            while self._starts:
                uid, (when, fields) = next(iter(self._starts.items()))
                if due_only and when > now:
                    break
                del self._starts[uid]
                if uid not in self._ending:  # its outcome is queued: that write supersedes this one
                    items.append((uid, fields, []))
        if items:
            try:
                self._store.finish_runs(items)
            except Exception as exc:  # noqa: BLE001 - only the "running" marker is lost; the end is not
                log.warning("could not record %d run start(s): %s", len(items), exc)

    def _start_grace(self) -> float:
        """How long past their due time starts wait: longer while the writer is busy."""
        busy = not self._queue.empty() or self._expected >= LINGER_MIN_DUE
        return START_GRACE_WHEN_BUSY if busy else 0.0

    def _next_wait(self) -> float:
        with self._lock:
            if not self._starts:
                return IDLE_EXIT
            first_due = next(iter(self._starts.values()))[0] + self._start_grace()
            return max(0.01, first_due - time.monotonic())

    def flush(self) -> None:
        """Block until everything queued so far is written, scaling events included.

        The events are pulled in the calling thread: at interpreter exit no new writer thread
        could be started, and if the writer thread is gone (it idled out just now), what is queued
        is written here too.
        """
        while self._queue.unfinished_tasks:
            thread = self._thread
            if thread is not None and thread.is_alive():
                self._queue.join()  # returns at once if the thread drains the queue meanwhile
                continue
            try:
                first = self._queue.get_nowait()
            except queue.Empty:  # taken by a writer thread that is just starting
                continue
            self._write_batch(self._gather(first))
        self._write_starts(due_only=False)
        self.pull_scaling_events()

    def close(self) -> None:
        """Flush, then stop watching backends (their later events belong to no open project)."""
        self.flush()
        with self._scaling_lock:
            self._watches.clear()

    def pull_scaling_events(self, throttled: bool = False) -> None:
        """Store and log the new scaling events of every watched backend.

        ``throttled`` pulls only if ``SCALING_PULL_INTERVAL`` has passed since the last pull, which
        keeps the cost per batch near zero when runs finish in a steady stream.
        """
        if not self._watches:
            return
        with self._scaling_lock:
            now = time.monotonic()
            if throttled and now < self._next_pull:
                return
            self._next_pull = now + SCALING_PULL_INTERVAL
            for watch in list(self._watches.values()):
                self._pull(watch)

    def _pull(self, watch: _Watch) -> None:
        try:
            events = list(watch.backend.scaling_events())
        except Exception as exc:  # noqa: BLE001 - an engine hiccup must not stop run recording
            log.warning("could not read the scaling events of %s: %s", watch.label, exc)
            return
        new = [event for event in events if _event_key(event) not in watch.seen]
        if new:
            try:
                self._store.record_scaling_events(watch.label, new)
            except Exception as exc:  # noqa: BLE001 - retried at the next pull
                log.warning("could not record %d scaling event(s) of %s: %s", len(new), watch.label, exc)
                return
            for event in new:
                _log_event(watch.label, event)
        # Only what the backend still reports can come back, so the set stays as small as its history.
        watch.seen = {_event_key(event) for event in events}

    def _loop(self) -> None:
        """Write batches until the queue has been empty for IDLE_EXIT seconds, then end the thread
        (the next run starts a new one), so closed projects leave no thread behind."""
        idle_since = time.monotonic()
        while True:
            try:
                first = self._queue.get(timeout=self._next_wait())
            except queue.Empty:
                self._write_starts(due_only=True, grace=self._start_grace())
                if time.monotonic() - idle_since < IDLE_EXIT:
                    continue
                self.pull_scaling_events()  # the scale-down after the last run ends lands here
                with self._lock:
                    if self._queue.empty() and not self._starts:
                        self._thread = None
                        return
                idle_since = time.monotonic()
                continue
            idle_since = time.monotonic()
            self._write_batch(self._gather(first))

    def _write_batch(self, batch: list[_Item]) -> None:
        """Write one gathered batch, then the starts that are due; mark the batch done."""
        try:
            self._warn_if_behind(batch)
            self._write(batch)
            self._write_starts(due_only=True, grace=self._start_grace())
            self.pull_scaling_events(throttled=True)
        except Exception:  # noqa: BLE001 - never let the thread die with handles waiting on it
            log.exception("recording a batch of %d runs failed", len(batch))
        finally:
            for _ in batch:
                self._queue.task_done()

    def _warn_if_behind(self, batch: list[_Item]) -> None:
        """Log (at most every BACKLOG_WARN_EVERY seconds) when outcomes waited long to be written."""
        now = time.monotonic()
        waited = now - min(item.queued for item in batch)
        if waited > BACKLOG_WARN and now - self._warned > BACKLOG_WARN_EVERY:
            self._warned = now
            log.warning(
                "the run recorder is %.1f s behind: writing %d outcome(s), %d more queued; the database "
                "(%s) is slower than the runs end",
                waited,
                len(batch),
                self._queue.qsize(),
                self._store.url,
            )

    def _gather(self, first: _Item) -> list[_Item]:
        """``first`` and what else is queued; while many more outcomes are expected, what comes
        within LINGER too (group commit)."""
        batch = [first]
        deadline = time.monotonic() + LINGER
        while len(batch) < MAX_WRITES_PER_TRANSACTION:
            try:
                batch.append(self._queue.get_nowait())
                continue
            except queue.Empty:
                pass
            left = deadline - time.monotonic()
            if self._arrivals < LINGER_MIN_DUE - 0.5 or left <= 0:  # (- 0.5: shares of 1/n add up inexactly)
                break
            time.sleep(min(left, LINGER_SLICE))  # then drain: no wake-up per arriving outcome
        return batch

    def _write(self, batch: list[_Item]) -> None:
        finished = {item.uid for item in batch if item.artifacts is not None}
        with self._lock:  # ended before their start was written: the start is never written
            for uid in finished:
                self._starts.pop(uid, None)
                self._ending.discard(uid)
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


def _count(value: int | None) -> str:
    return "?" if value is None or value < 0 else str(value)


def _log_event(label: str, event: ScalingEvent) -> None:
    scaling_log.info(
        "%s scaled %s: %s -> %s workers (%s)",
        label,
        event.direction,
        _count(event.workers_before),
        _count(event.workers_after),
        event.reason,
    )


def unrecordable(fields: dict[str, Any], problem: Exception) -> dict[str, Any]:
    """What is recorded instead of an outcome the store refused: a failed run saying why."""
    from .execution import error_dict

    return {
        "state": "failed",
        "error": error_dict(
            type(problem).__name__,
            f"the run ended {fields.get('state')} but its outcome could not be recorded: {problem}",
        ),
        "results": {},
        "metrics": {},
        "logs": "",
        "attempts": fields.get("attempts", 0),
        "started_at": fields.get("started_at"),
        "ended_at": fields.get("ended_at"),
    }
