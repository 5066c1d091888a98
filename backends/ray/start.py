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
from collections.abc import Callable

from .fifo import open_fifo

log = logging.getLogger("shoal.backends.ray")


class StartPipe:
    """Starts of runs, from workers on this machine, through a named pipe in ``folder`` that one
    thread reads; ``deliver(uid, started, node)`` is called on that thread."""

    def __init__(self, folder: str, deliver: Callable[[str, float, str], None]):
        self.path, self._fd = open_fifo(folder, "starts.pipe")
        self._deliver = deliver
        self._closed = False
        self._thread = threading.Thread(target=self._read, name="shoal-ray-starts", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        rest = b""
        while not self._closed:
            chunk = os.read(self._fd, 1 << 16)
            *lines, rest = (rest + chunk).split(b"\n")
            for line in lines:
                parts = line.decode(errors="replace").split()
                if len(parts) == 3:
                    try:
                        self._deliver(parts[0], float(parts[1]), parts[2])
                    except Exception:  # noqa: BLE001 - a driver callback must not end the reader
                        log.exception("ray: delivering a run start failed")
        os.close(self._fd)

    def close(self) -> None:
        self._closed = True
        try:
            os.write(self._fd, b"\n")  # wake the reader
        except OSError:
            pass
        self._thread.join(5)


__all__ = ["StartPipe"]
