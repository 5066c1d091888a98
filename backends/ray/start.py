"""The start pipe: how the driver learns that a run started on a Ray worker of this machine.

Ray does not tell the driver when a task starts; an actor or a streaming task would (measured: both
cost more than the task itself), while a line into a local named pipe costs microseconds. The worker
writes ``uid started node`` for runs still running after a moment (``shoal.backends.ray.announce``);
one driver thread reads. The start of a run that ended sooner comes with its outcome. Joined
clusters (workers on other machines) have no start reports.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

from .fifo import open_fifo

log = logging.getLogger("shoal.backends.ray")

#: Seconds the reader waits after a read before it reads again, while ``ended`` says many more ends
#: are due (a map's, a pipeline's): those come a few per millisecond, and each wake-up of the reader
#: costs more of the driver's CPU (taking the GIL from the submitting thread, cold caches) than
#: settling one more end in it. A lone run's end (or a small search's) is read at once.
GATHER = 0.002


class StartPipe:
    """Starts of runs, from workers on this machine, through a named pipe in ``folder`` that one
    thread reads; ``deliver(uid, started, node)`` is called on that thread for each start, and
    ``ended([(token, value or None), ...])`` for the task ends of each read, which says whether
    many more ends are due (the reader then lets a few gather, see ``GATHER``)."""

    def __init__(
        self,
        folder: str,
        deliver: Callable[[str, float, str], None],
        ended: Callable[[list[tuple[str, str | None]]], bool],
    ):
        self.path, self._fd = open_fifo(folder, "starts.pipe")
        self._deliver = deliver
        self._ended = ended
        self._closed = False
        self._thread = threading.Thread(target=self._read, name="shoal-ray-starts", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        rest = b""
        while not self._closed:
            chunk = os.read(self._fd, 1 << 16)
            *lines, rest = (rest + chunk).split(b"\n")
            ends: list[tuple[str, str | None]] = []
            for line in lines:
                parts = line.decode(errors="replace").split()
                if len(parts) in (2, 3) and parts[1] == "end":
                    ends.append((parts[0], parts[2] if len(parts) == 3 else None))
                elif len(parts) == 3:
                    try:
                        self._deliver(parts[0], float(parts[1]), parts[2])
                    except Exception:  # noqa: BLE001 - a driver callback must not end the reader
                        log.exception("ray: delivering a run start failed")
            if ends:
                try:
                    busy = self._ended(ends)
                except Exception:  # noqa: BLE001 - as above; the end watch's look finds these tasks
                    log.exception("ray: settling ended tasks failed")
                    busy = False
                if busy and GATHER:
                    time.sleep(GATHER)
        os.close(self._fd)

    def close(self) -> None:
        self._closed = True
        try:
            os.write(self._fd, b"\n")  # wake the reader
        except OSError:
            pass
        self._thread.join(5)


__all__ = ["StartPipe"]
