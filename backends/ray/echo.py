"""Live output of watched runs on Ray (``watch=True``), as the embedded Dask cluster shows it.

Dask's embedded workers write to the driver's terminal, which they inherit. Ray's write to files in
its session folder, and Ray's own forwarding (``log_to_driver``) stays off: it would also print
every worker's and daemon's own output, prefixed and deduplicated. So a watched run's echoed output
goes through a named pipe in the instance's folder, which a thread of the driver copies to its own
stdout and stderr. Workers on other machines (joined clusters) cannot reach it and echo nothing, as
on a remote Dask cluster.

Each write is one frame (stream, length, UTF-8 text) of at most ``PIPE_BUF`` bytes, which a pipe
writes whole, so the output of several workers never mixes within a frame.
"""

from __future__ import annotations

import logging
import os
import select
import struct
import sys
import threading
import time
from collections.abc import Callable

from .fifo import open_fifo

log = logging.getLogger("shoal.backends.ray")

_HEADER = struct.Struct(">cI")  # b"o" (stdout) or b"e" (stderr), payload length
_CHARS = (select.PIPE_BUF - _HEADER.size) // 4  # characters per frame: at most 4 bytes each in UTF-8
_END = b"x"  # the driver's own frames: stop reading; a flush mark
_MARK = b"m"
_STALL = 5.0  # seconds a worker waits for room in the pipe before dropping a frame


class EchoPipe:
    """The driver's end: a named pipe in ``folder`` and a thread copying its frames to sys.stdout/err."""

    def __init__(self, folder: str):
        self.path, self._fd = open_fifo(folder, "echo.pipe")
        self._marked = threading.Condition()
        self._sent = self._passed = 0  # marks written by flush, marks the reader passed
        self._done = False  # the reader stopped
        self._thread = threading.Thread(target=self._read, name="shoal-ray-echo", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        buffer = b""
        try:
            while True:
                buffer += os.read(self._fd, 1 << 16)
                while len(buffer) >= _HEADER.size:
                    stream, size = _HEADER.unpack_from(buffer)
                    end = _HEADER.size + size
                    if len(buffer) < end:
                        break
                    text, buffer = buffer[_HEADER.size : end].decode(errors="replace"), buffer[end:]
                    if stream == _END:
                        return
                    if stream == _MARK:
                        with self._marked:
                            self._passed += 1
                            self._marked.notify_all()
                    else:
                        _show(sys.stderr if stream == b"e" else sys.stdout, text)
        finally:
            with self._marked:
                self._done = True
                self._marked.notify_all()

    def flush(self, timeout: float = 2.0) -> None:
        """Return once what workers wrote before now is shown (a mark queued behind it is read):
        a watched run's output comes before its outcome, as with an engine writing to the terminal."""
        with self._marked:
            if self._done:
                return
            self._sent += 1
            target = self._sent
            try:
                os.write(self._fd, _HEADER.pack(_MARK, 0))
            except OSError:
                return
            self._marked.wait_for(lambda: self._done or self._passed >= target, timeout)

    def close(self) -> None:
        """Stop once what workers wrote so far is copied (the end mark queues behind it)."""
        with self._marked:
            if self._fd < 0:
                return
            if not self._done:
                os.write(self._fd, _HEADER.pack(_END, 0))
        self._thread.join(5)
        with self._marked:
            self._done = True
            os.close(self._fd)
            self._fd = -1


def _show(stream, text: str) -> None:
    try:
        stream.write(text)
        stream.flush()
    except Exception:  # noqa: BLE001 - a closed or broken terminal must not end the reader
        pass


_sinks: dict[str, Callable[[str, str], None] | None] = {}  # pipe path -> its writer, in each worker


def sink(path: str) -> Callable[[str, str], None] | None:
    """The worker's end: a function writing ``(stream, text)`` frames into the driver's pipe, or None
    when the pipe is not reachable from here (another machine, a driver that is gone)."""
    if path not in _sinks:
        _sinks[path] = _open_sink(path)
    return _sinks[path]


def _open_sink(path: str) -> Callable[[str, str], None] | None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return None

    def write(stream: str, text: str) -> None:
        kind = b"e" if stream == "stderr" else b"o"
        for start in range(0, len(text), _CHARS):
            data = text[start : start + _CHARS].encode(errors="replace")
            _write_frame(fd, _HEADER.pack(kind, len(data)) + data)

    return write


def _write_frame(fd: int, frame: bytes) -> None:
    """One atomic write; waits (bounded) while a lagging driver leaves the pipe full."""
    deadline = time.monotonic() + _STALL
    while True:
        try:
            os.write(fd, frame)
            return
        except BlockingIOError:
            left = deadline - time.monotonic()
            if left <= 0:
                return  # dropped: a stalled driver must not stall the run
            select.select([], [fd], [], left)
        except OSError:
            return  # the driver is gone
