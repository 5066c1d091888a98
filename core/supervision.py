"""Stopping a running handler: a cancel request (``StopSignal``), a timeout (``deadline`` in the
main thread, ``supervise`` elsewhere), and ``call_stoppable``, which picks between them.

Worker side: ``shoal.execution.execute`` calls the handler through ``call_stoppable``; the local
backend and the isolation pool hand a ``StopSignal`` to ``execute`` to cancel a run.
"""

from __future__ import annotations

import ctypes
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from . import logcapture
from .errors import RunCancelledError, RunTimeoutError


def async_raise(thread_id: int, exc_type: type[BaseException]) -> bool:
    """Raise ``exc_type`` in another thread at its next bytecode (how local runs are stopped)."""
    done = ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(exc_type))
    if done > 1:  # should not happen; undo
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), None)
        return False
    return done == 1


STOP_GRACE = 1.0  # seconds a stopped handler gets to unwind before its thread is abandoned
POLL = 0.02  # how often a waiting worker looks at its stop signal


class StopSignal:
    """A request to stop one running attempt, deliverable from any thread (how backends cancel).

    While the handler runs in the worker's own thread, ``set()`` raises RunCancelledError in it at
    its next bytecode; a supervised handler's waiter (see ``supervise``) polls ``is_set()``.
    """

    # One lock for all signals: held for a few bytecodes at a time, and a run need not make one.
    _lock = threading.Lock()
    __slots__ = ("_requested", "_thread")

    def __init__(self) -> None:
        self._requested = False
        self._thread: int | None = None

    def set(self) -> None:
        with self._lock:
            self._requested = True
            if self._thread is not None:
                async_raise(self._thread, RunCancelledError)
                self._thread = None  # one exception is enough

    def is_set(self) -> bool:
        return self._requested

    def call(self, body: Callable[..., Any], *args: Any) -> Any:
        """``body(*args)`` in this thread, interruptible by ``set()`` only while it runs."""
        with self._lock:
            if self._requested:
                raise RunCancelledError()
            self._thread = threading.get_ident()
        try:
            return body(*args)
        finally:
            with self._lock:  # a stop sent just before lands here, still inside the caller's try
                self._thread = None


def _alarm_usable() -> bool:
    return threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")


@contextmanager
def deadline(seconds: float | None) -> Iterator[None]:
    """Raise RunTimeoutError inside the block after ``seconds`` (SIGALRM: main thread only).

    A signal also interrupts blocking calls such as ``time.sleep``; other threads use ``supervise``.
    """
    if not seconds:
        yield
        return
    if not _alarm_usable():
        raise RuntimeError("deadline() needs the main thread; use supervise() elsewhere")

    def on_alarm(signum, frame):
        raise RunTimeoutError()

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class _HandlerThread(threading.Thread):
    """Runs the handler so that the worker thread can give up on it.

    An asynchronous exception only lands between bytecodes, never inside ``time.sleep`` or a
    blocking read; running the handler here lets the waiting worker end the run on time anyway.
    """

    def __init__(self, body: Callable[[], Any], name: str):
        super().__init__(name=name, daemon=True)
        self.body = body
        self.capture = logcapture.current()
        self.finished = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self._active = True

    def run(self) -> None:
        try:
            try:
                with logcapture.attach(self.capture):
                    self.value = self.body()
            finally:
                with self._lock:  # after this, stop() sends nothing more
                    self._active = False
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting worker
            self.error = exc
        finally:
            self.finished.set()

    def stop(self, exc_type: type[BaseException]) -> None:
        """Raise ``exc_type`` in the handler and give it STOP_GRACE seconds to unwind."""
        with self._lock:
            if self._active and self.ident is not None:
                async_raise(self.ident, exc_type)
        self.finished.wait(STOP_GRACE)

    def result(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.value


def supervise(
    body: Callable[[], Any], *, timeout: float | None, stop: StopSignal | None = None, name: str = "shoal-run"
) -> Any:
    """``body()`` in a helper thread; RunTimeoutError after ``timeout`` s, RunCancelledError once
    ``stop`` is set, both raised here even if the handler is blocked and cannot be stopped (its
    thread is then abandoned)."""
    call = _HandlerThread(body, name)
    call.start()
    end = None if not timeout else time.monotonic() + timeout
    while True:
        wait = POLL if stop is not None else None
        if end is not None:
            remaining = max(0.0, end - time.monotonic())
            wait = remaining if wait is None else min(wait, remaining)
        if call.finished.wait(wait):
            return call.result()
        if stop is not None and stop.is_set():
            call.stop(RunCancelledError)
            raise RunCancelledError()
        if end is not None and time.monotonic() >= end:
            call.stop(RunTimeoutError)
            raise RunTimeoutError()


def call_stoppable(body: Callable[[], Any], timeout: float | None, stop: StopSignal | None, name: str) -> Any:
    """Call the handler where it can be stopped.

    Without a timeout it runs in this thread (cheapest; a stop lands between bytecodes, so a handler
    blocked in one long call stops when that call returns). A timeout in the main thread is a
    SIGALRM; elsewhere the handler runs in a supervised helper thread so that the timeout holds
    even when it is blocked.
    """
    if not timeout:  # most runs: no timer to set
        return stop.call(body) if stop is not None else body()
    if not _alarm_usable():
        return supervise(body, timeout=timeout, stop=stop, name=name)
    with deadline(timeout):
        return stop.call(body) if stop is not None else body()
