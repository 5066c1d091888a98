"""The driver's named pipes (run starts, watched runs' output): how each is made and opened."""

from __future__ import annotations

import os


def open_fifo(folder: str, name: str) -> tuple[str, int]:
    """Make the named pipe ``name`` in ``folder`` and open it; return its path and descriptor.

    Opened read-write, so the reader sees no end-of-file while workers come and go; grown to 1 MiB
    where Linux allows, so a burst of workers' writes waits less on a lagging reader (the default
    64 KiB holds about a thousand start lines).
    """
    path = os.path.join(folder, name)
    os.mkfifo(path, 0o600)
    fd = os.open(path, os.O_RDWR)
    try:
        import fcntl

        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
    except OSError:
        pass  # not Linux, or above the system's limit: the default size works, only smaller
    return path, fd


__all__ = ["open_fifo"]
