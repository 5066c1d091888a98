"""``fn.submit``/``fn.run``/``fn.map`` with ``cache=True``: runs recorded ``cached`` at once, the others
created and launched, and runs whose key another driver holds recorded pending until that driver's
outcome is known (one thread per call waits for them, so ``submit`` still returns at once).
The lookup itself is ``shoal.cached_runs``.
"""

from __future__ import annotations

import threading
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from .artifacts import Artifact
from .cached_runs import Busy, CacheCall, Cached, Claim, finished_handle, log, record_cached, resolve_many, run_from_row
from .execution import error_dict
from .runs import Run, RunHandle
from .step_cache import CacheOptions

if TYPE_CHECKING:  # pragma: no cover
    from .runner import Driver


def submit_cached(
    driver: Driver,
    record: dict[str, Any],
    inputs: dict[str, Artifact],
    params: dict[str, Any],
    options: CacheOptions,
    *,
    watch: bool = False,
) -> RunHandle:
    """Record and launch run ``record`` unless the cache has it; returns at once. While another driver
    runs the same key, the run is recorded pending until that driver's outcome is known."""
    (handle,) = launch_cached(driver, [record], inputs, [params], options, watch=watch, batch_size=1)
    return handle


def launch_cached(
    driver: Driver,
    records: list[dict[str, Any]],
    inputs: dict[str, Artifact],
    params: list[dict[str, Any]],
    options: CacheOptions,
    **launch: Any,
) -> list[RunHandle]:
    """Handles of runs ``records`` (not yet created) in order: ``cached`` ones done at once, the
    rest created and launched (``launch``: ``Driver.launch_many``'s keywords); runs whose key another
    driver holds are recorded pending and launched or cached once that driver's run has ended."""
    project = driver.project
    outcomes = resolve_many(
        project, [CacheCall(driver.fn, p, inputs, options, r["uid"]) for r, p in zip(records, params)]
    )
    handles: dict[str, RunHandle] = {}
    cached = [(r, o) for r, o in zip(records, outcomes) if isinstance(o, Cached)]
    busy = [(r, p, o) for r, p, o in zip(records, params, outcomes) if isinstance(o, Busy)]
    go = [(r, p, o) for r, p, o in zip(records, params, outcomes) if not isinstance(o, (Cached, Busy))]
    if cached:
        runs = record_cached(project, [r for r, _ in cached], [o for _, o in cached])
        handles.update((run.uid, finished_handle(run)) for run in runs)
    claims = [o for _, _, o in go if isinstance(o, Claim)]
    for record, _, outcome in go:
        if isinstance(outcome, Claim):
            outcome.stamp(record)
    try:
        project.store.create_runs([r for r, _, _ in go] + [r for r, _, _ in busy])  # busy ones wait pending
    except BaseException:
        for claim in claims:
            claim.release()
        raise
    if go:
        started = driver.launch_many([r for r, _, _ in go], inputs, [p for _, p, _ in go], **launch)
        handles.update((h.uid, h) for h in started)
    if busy:  # waited for after launching ours: a key this very call holds ends too
        handles.update((w.handle.uid, w.handle) for w in _follow(driver, busy, inputs, launch.get("watch", False)))
    return [handles[r["uid"]] for r in records]


class _Waiting:
    """A run recorded pending while another driver runs its key; its handle resolves once that
    driver's outcome is known (cached, or launched here and finished)."""

    def __init__(self, record: dict[str, Any], params: dict[str, Any], busy: Busy, function: str):
        self.record, self.params, self.busy = record, params, busy
        self.stop = threading.Event()
        self.inner: RunHandle | None = None
        self.handle = RunHandle(record["uid"], function, self._cancel)

    def _cancel(self, handle: RunHandle) -> bool:
        self.stop.set()
        inner = self.inner
        return inner.cancel() if inner is not None else True

    def settle(self, driver: Driver, inputs: dict[str, Artifact], watch: bool) -> None:
        store, uid = driver.project.store, self.record["uid"]
        try:
            outcome = self.busy.wait(self.stop)
            if isinstance(outcome, Busy):  # cancelled while it waited
                store.cancel_runs([uid], "cancelled while it waited for another driver's run of its cache key")
                self.handle.set_run(Run.from_record(store.get_run(uid)))
                return
            inner = _after_wait(driver, self.record, inputs, self.params, outcome, watch)
        except Exception as exc:  # noqa: BLE001 - the store failed: the run fails, the handle resolves
            self._fail(store, exc)
            return
        self.inner = inner
        if self.stop.is_set():
            inner.cancel()
        inner.add_done_callback(lambda done: self.handle.set_run(done.result()))

    def _fail(self, store: Any, exc: Exception) -> None:
        fields = {
            "state": "failed",
            "error": error_dict(type(exc).__name__, str(exc)),
            "ended_at": datetime.now(timezone.utc),
        }
        try:
            store.update_run(self.record["uid"], **fields)
        except Exception as problem:  # noqa: BLE001 - the handle must resolve all the same
            log.warning("could not record run %s as failed: %s", self.record["uid"][:12], problem)
        self.handle.set_run(run_from_row({**self.record, **fields}))


def _follow(
    driver: Driver, busy: list[tuple[dict[str, Any], dict[str, Any], Busy]], inputs: dict[str, Artifact], watch: bool
) -> list[_Waiting]:
    """Handles of the runs in ``busy``, settled in turn by one thread that waits for the other drivers."""
    waiting = [_Waiting(record, params, outcome, driver.fn.name) for record, params, outcome in busy]

    def settle_all() -> None:
        for entry in waiting:
            entry.settle(driver, inputs, watch)

    threading.Thread(target=settle_all, name="shoal-cache-wait", daemon=True).start()
    return waiting


def _after_wait(
    driver: Driver,
    record: dict[str, Any],
    inputs: dict[str, Artifact],
    params: dict[str, Any],
    outcome: Any,
    watch: bool,
) -> RunHandle:
    """The pending run ``record`` once the driver it waited for is done: cached, or launched here."""
    if isinstance(outcome, Cached):
        (run,) = record_cached(driver.project, [record], [outcome], new=False)
        return finished_handle(run)
    outcome.stamp(record)
    driver.project.store.update_run(record["uid"], cache_key=outcome.key)
    return driver.launch(record, inputs, params=params, watch=watch)
