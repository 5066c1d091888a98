"""What a Dask task of shoal carries: the run (or batch) encoded without its code, and the code by
reference, as the result of a task of its own that enters the cluster's graph once per function.

Why: a function's code is its whole source file, and a driver's script also travels as a
by-value pickle; inside every task that made ~13 KB per run (a 25 MiB graph for 2,000 runs) that
the driver pickled, the scheduler held and forwarded, and every worker unpickled once per run. As a
dependency the code reaches each worker once and stays in its memory while runs of the function
are in flight. It is computed, not scattered: a worker lost with it makes Dask compute it again
from the graph, so no run ever lacks its code. It is released when the function's last task ends:
data held in the cluster would keep Dask's ``Adaptive`` from retiring the last worker (scaling to
zero), and the next map sends it again, once.

Only while enough tasks are in flight, though: Dask starts a task that has dependencies on a worker
holding one of them, unless its group is larger than twice the cluster's threads ("root-ish": then
tasks are queued and go to the least busy workers). A few tasks (a search's trials, a small map)
would all go to the one worker that computed the code, the others idle until work stealing moves
one (measured: a search of parallelism 2 left its second worker idle ~0.5 s at its start). So
while a backend has no more tasks in flight than that, each carries its code inside (~20 KB,
~0.1 ms of pickling on each side) and Dask places it where a thread is free.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Any

from shoal.code import Code
from shoal.execution import RunBatch, RunTask

from ..task_codec import decode, encode

CODE_KEY_PREFIX = "shoal-code-"
# Dask's ``fifo_timeout`` for every task shoal submits: each submission its own graph generation, so
# runs that become ready together (every run of a function waits on its one code task) start in
# the order they were submitted. Dask's default (100 ms) gives submissions made within 100 ms of
# each other equal priority, and the worker then starts them in an arbitrary order.
SUBMISSION_ORDER = 0


def code_on_worker(packed: bytes) -> Code:
    """The task that holds a function's code in the cluster: its result is the ``Code``."""
    code: Code = decode(packed)
    return code


def with_code(task: RunTask | RunBatch, code: Code | None) -> RunTask | RunBatch:
    """Put the code shipped by reference back into the run(s) that travelled without it (worker)."""
    if code is not None:
        for member in _members(task):
            if member.code is None:
                member.code = code
    return task


class CodeShipper:
    """The Dask future of the code of each function with tasks in flight, and how many tasks use
    it; the payload of a task: ``(run encoded without its code, code future)``, or the run with its
    code while ``by_reference()`` says the tasks in flight are too few (see the module's doc)."""

    def __init__(self, by_reference: Callable[[], bool] = lambda: True) -> None:
        self._by_reference = by_reference
        self._held: dict[str, tuple[Any, int]] = {}  # function hash -> (code future, tasks using it)
        self._lock = threading.Lock()

    def payload(self, client: Any, task: RunTask | RunBatch) -> tuple[bytes, Any]:
        """The encoded run(s) and the future of their code (None when they carry none). A task
        given a code future gives it back with :meth:`release` when it has ended."""
        runs = _members(task)
        code = runs[0].code
        if code is None or not self._by_reference():
            return encode(task), None
        future = self._acquire(client, task.function_hash, code)
        shipped = [member.without_code() for member in runs]
        return encode(RunBatch(shipped) if isinstance(task, RunBatch) else shipped[0]), future

    def submit(self, client: Any, func: Any, task: RunTask | RunBatch, key: str, **options: Any) -> tuple[Any, bool]:
        """``client.submit`` of ``func(packed, key, code)`` for one run (or batch), after those
        submitted before it. Returns the Dask future and whether it holds the code future (it then
        gives it back with :meth:`release`)."""
        packed, code = self.payload(client, task)
        try:
            future = client.submit(
                func, packed, key, code, key=key, pure=False, fifo_timeout=SUBMISSION_ORDER, **options
            )
        except BaseException:
            if code is not None:  # never submitted: it holds no code
                self.release(task.function_hash)
            raise
        return future, code is not None

    def map(
        self, client: Any, func: Any, tasks: list[RunTask], keys: list[str], **options: Any
    ) -> tuple[list[Any], bool]:
        """``client.map`` of ``func(packed, key, code)`` over runs of one function: one graph
        update in which the code appears once, the runs in the order given, after those submitted
        before. Returns the Dask futures and whether they hold the code future (each then gives it
        back with :meth:`release`)."""
        payloads = [self.payload(client, task) for task in tasks]
        code = payloads[0][1]
        try:
            submitted = client.map(
                func,
                [packed for packed, _ in payloads],
                keys,
                key=keys,
                pure=False,
                code=code,
                fifo_timeout=SUBMISSION_ORDER,
                **options,
            )
        except BaseException:
            if code is not None:  # never submitted: they hold no code
                for task in tasks:
                    self.release(task.function_hash)
            raise
        return submitted, code is not None

    def _acquire(self, client: Any, function_hash: str, code: Code) -> Any:
        with self._lock:
            future, users = self._held.get(function_hash, (None, 0))
            # A code task that erred (it was queued on a worker that died: a task sent by reference
            # once the tasks in flight grew, see the module's doc) is sent again for the next ones.
            if future is None or future.status in ("error", "cancelled"):
                key = f"{CODE_KEY_PREFIX}{function_hash}-{uuid.uuid4().hex[:8]}"
                future = client.submit(code_on_worker, encode(code), key=key, pure=False, fifo_timeout=SUBMISSION_ORDER)
            self._held[function_hash] = (future, users + 1)
            return future

    def release(self, function_hash: str) -> None:
        """A task of this function ended; the last one lets go of the code future."""
        with self._lock:
            future, users = self._held.get(function_hash, (None, 0))
            if users <= 1:
                self._held.pop(function_hash, None)
            else:
                self._held[function_hash] = (future, users - 1)

    def clear(self) -> None:
        """Let go of every code future (the backend closes)."""
        with self._lock:
            self._held.clear()


def _members(task: RunTask | RunBatch) -> list[RunTask]:
    return task.tasks if isinstance(task, RunBatch) else [task]


__all__ = ["CODE_KEY_PREFIX", "SUBMISSION_ORDER", "CodeShipper", "code_on_worker", "with_code"]
