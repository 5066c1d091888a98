"""Run ends through the start pipe: how the driver learns that a task on a worker of this machine
ended without a completion callback per task.

Ray runs a ref's completion callback on its core worker's io thread, which takes the GIL and
deserialises the value in Python for every task: measured ~75 us of the driver's CPU per task with
a no-op callback (a map of 2,000 no-op runs doubled that thread's CPU). So on an instance of its
own the backend attaches no callback. Just before a task returns, its worker writes
``token end [value]`` into the start pipe (the token the driver gave that submission; the value,
base64, when the line fits in one atomic pipe write, as a small outcome does), and the pipe's reader
hands each read's ends here: a value that came with its line settles its future at once, the others
are fetched with one ``ray.get`` per read. A task that ends without its line is settled otherwise:
a cancelled one by Ray's callback (``RayFuture.cancel`` attaches it), a lost worker's or a dropped
line's by a look at the oldest unreported tasks every ``POLL`` seconds. Joined clusters (workers on
other machines) keep Ray's callbacks.
"""

from __future__ import annotations

import base64
import itertools
import logging
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .future import RayFuture

log = logging.getLogger("shoal.backends.ray")

POLL = 0.2  # seconds between looks for tasks that ended without a line
LOOK_AT = 512  # the oldest tasks still unreported that a look checks (a look costs per task)
FETCH_TIMEOUT = 5.0  # seconds the reader waits for the values of tasks that said they end
#: Tasks still awaited from which their ends count as coming in a stream (``StartPipe`` then gathers
#: a few per wake-up); with fewer (a search of parallelism 2, one run), each end is wanted at once.
BUSY_FROM = 16


class EndWatch:
    """The futures whose task will say when it ends, by submission token; settles them as their
    ends come. A token per submission, not the run's uid: a line late for one attempt must not
    settle the next attempt of the same run."""

    def __init__(self) -> None:
        self._tokens = itertools.count()
        self._awaiting: dict[str, _Entry] = {}
        self._early: set[str] = set()  # ends read before their future was registered (a fast task)
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="shoal-ray-ends", daemon=True)
        self._thread.start()

    def token(self) -> str:
        """A new submission's token (for its payload)."""
        return str(next(self._tokens))

    def watch(self, token: str, future: RayFuture, ref: Any) -> bool:
        """Settle ``future`` when the end of ``ref``'s task, submitted as ``token``, is read; False
        when its end came already (a task faster than this call): the caller then attaches Ray's
        callback."""
        with self._lock:
            if token in self._early:
                self._early.discard(token)
                return False
            self._awaiting[token] = (token, future, ref)
        return True

    def ended(self, ends: list[tuple[str, str | None]]) -> bool:
        """The reader's ends of one read, ``(token, value in base64 or None)`` (on its thread):
        settled with the value the line carries, the others' values fetched from Ray at once.
        True while ``BUSY_FROM`` tasks or more are still awaited."""
        with self._lock:
            carried, fetched = [], []
            for token, data in ends:
                entry = self._awaiting.pop(token, None)
                if entry is None:
                    self._early.add(token)
                elif data is not None:
                    carried.append((entry[1], data))
                else:
                    fetched.append(entry)
            busy = len(self._awaiting) >= BUSY_FROM
        for future, data in carried:
            future.settle(base64.b64decode(data))
        if fetched:
            self._settle(fetched, FETCH_TIMEOUT)
        return busy

    def _settle(self, entries: list[_Entry], timeout: float) -> None:
        """One ``ray.get`` for all; per task only when one of them failed or is not there yet."""
        import ray

        try:
            values = ray.get([ref for _, _, ref in entries], timeout=timeout)
        except Exception:  # noqa: BLE001 - an engine failure among them: each on its own
            for entry in entries:
                self._settle_one(entry, ray)
            return
        for (_, future, _), value in zip(entries, values):
            future.settle(value)

    def _settle_one(self, entry: _Entry, ray: Any) -> None:
        token, future, ref = entry
        try:
            value = ray.get(ref, timeout=0)
        except ray.exceptions.GetTimeoutError:  # not there yet: the next look finds it
            with self._lock:
                self._awaiting.setdefault(token, entry)
            return
        except Exception as exc:  # noqa: BLE001 - Ray's failure of the task is its result, as a callback gets it
            value = exc
        future.settle(value)

    def _poll(self) -> None:
        while not self._closed.wait(POLL):
            try:
                self._look()
            except Exception:  # noqa: BLE001 - a failed look is retried at the next
                log.exception("ray: looking for ended tasks failed")

    def _look(self) -> None:
        """Tasks that ended without their line (or whose line is still on its way): settled now."""
        with self._lock:  # the oldest: lost workers ran those, dropped lines were theirs
            waiting = list(itertools.islice(self._awaiting.values(), LOOK_AT))
        if not waiting:
            return
        import ray

        refs = [ref for _, _, ref in waiting]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=False)
        if not ready:
            return
        done = set(ready)
        with self._lock:  # claimed here unless the reader took the task meanwhile
            claimed = [e for e in waiting if e[2] in done and self._awaiting.get(e[0]) is e]
            for token, _, _ in claimed:
                del self._awaiting[token]
        if claimed:
            self._settle(claimed, 0)

    def close(self) -> None:
        """Stop looking (the backend settles what is still in flight itself)."""
        self._closed.set()
        self._thread.join(5)
        with self._lock:
            self._awaiting.clear()
            self._early.clear()


_Entry = tuple[str, "RayFuture", Any]  # (token, future, its task's ObjectRef)

__all__ = ["BUSY_FROM", "FETCH_TIMEOUT", "POLL", "EndWatch"]
