"""This process's heartbeat as a driver, from one background thread.

Other machines cannot look up a PID here, so they judge a driver by its heartbeat. The thread beats
every ``HEARTBEAT_INTERVAL`` while the process has open runs in the store and ends when it has none
(a new run starts it again), so an idle process keeps no thread. Each beat also reads which of the
process's runs are recorded cancelled, which is how a ``shoal runs cancel`` from another process
reaches a run this process drives.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from .drivers import HEARTBEAT_INTERVAL

log = logging.getLogger("shoal.store")

Beat = Callable[[], "tuple[bool, list[str]]"]


class Heartbeat:
    """Calls ``beat`` (-> has open runs, cancelled uids) periodically; hands cancelled uids to
    ``on_cancelled``."""

    def __init__(self, beat: Beat, interval: float = HEARTBEAT_INTERVAL) -> None:
        self._beat = beat
        self.interval = interval
        self.on_cancelled: Callable[[list[str]], None] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._generation = 0  # bumped by kick(): the thread ends only if nothing new came meanwhile

    def kick(self) -> None:
        """Runs were recorded: make sure the thread beats."""
        with self._lock:
            self._generation += 1
            if self._stop.is_set():
                return
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="shoal-heartbeat", daemon=True)
                self._thread.start()

    def stop(self) -> None:
        """End the thread (the store is closing)."""
        self._stop.set()
        with self._lock:
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                generation = self._generation
            try:
                has_open, cancelled = self._beat()
            except Exception as exc:  # noqa: BLE001 - a database hiccup: beat again next time
                log.warning("could not record the driver heartbeat: %s", exc)
                continue
            hook = self.on_cancelled
            if cancelled and hook is not None:
                try:
                    hook(cancelled)
                except Exception:  # noqa: BLE001 - a failed cancel must not stop the heartbeat
                    log.exception("cancelling runs cancelled from outside failed")
            if not has_open:
                with self._lock:
                    if self._generation == generation:
                        self._thread = None
                        return
