"""Runs that set environment variables, in processes of their own.

``os.environ`` belongs to the whole process: two runs in threads of one process that set the same
variable to different values would see each other's. Where runs share a process (the local
backend's threads, a Dask worker with several threads), a run whose ``env`` (or secrets) differs
from the process's environment runs instead in a child Python process started with that
environment, as a program of its own (``python -m shoal.isolation``: the user's script is never
re-imported). The child executes runs with ``shoal.execution.execute`` and reports each start and
outcome over a pipe.

Starting a child costs a Python start and ``import shoal`` (a few hundred ms), so an idle child is
kept for the next run with the same environment (``ChildPool``); a child whose run was stopped or
timed out is not reused. Control goes through the child's stdin: a run, or a request to stop it;
end of file (its parent is gone) stops the child, so it never outlives its driver for long.
"""

from __future__ import annotations

import collections
import os
import pickle
import queue
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import IO, Any

KILL_GRACE = 5.0  # seconds past a run's timeout, or a stop request, before a silent child is killed
POLL = 0.05  # how often the parent looks at its stop signal while it waits
_FRAME = 4  # bytes of the length prefix of each message


def wanted_environment(task: Any) -> dict[str, str]:
    return {**task.env, **task.secrets}


def changes_environment(task: Any) -> bool:
    """True when the task's env or secrets would change this process's environment."""
    return any(os.environ.get(name) != value for name, value in wanted_environment(task).items())


def _frame(message: Any) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return len(data).to_bytes(_FRAME, "big") + data


class _Messages:
    """Length-prefixed pickles read from a pipe without blocking past what ``select`` says."""

    def __init__(self, fd: int):
        self.fd = fd
        self.buffer = b""
        self.closed = False

    def poll(self, wait: float | None) -> list[Any]:
        if not self.closed and select.select([self.fd], [], [], wait)[0]:
            chunk = os.read(self.fd, 1 << 20)
            self.closed = not chunk
            self.buffer += chunk
        out = []
        while len(self.buffer) >= _FRAME:
            size = int.from_bytes(self.buffer[:_FRAME], "big")
            if len(self.buffer) < _FRAME + size:
                break
            out.append(pickle.loads(self.buffer[_FRAME : _FRAME + size]))
            self.buffer = self.buffer[_FRAME + size :]
        return out


class _Child:
    """The parent's handle on one child process."""

    def __init__(self, environment: dict[str, str]):
        read, write = os.pipe()
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "shoal.isolation", str(write)],
                stdin=subprocess.PIPE,
                env=environment,
                pass_fds=(write,),
            )
        except BaseException:
            os.close(read)
            raise
        finally:
            os.close(write)
        self.read = read
        self.messages = _Messages(read)
        self.send(("path", list(sys.path)))  # the driver's, so the tasks' references import as there

    @property
    def stdin(self) -> IO[bytes]:
        stdin = self.process.stdin
        assert stdin is not None  # opened as a pipe in __init__
        return stdin

    def send(self, message: Any) -> bool:
        try:
            self.stdin.write(_frame(message))
            self.stdin.flush()
            return True
        except (BrokenPipeError, OSError, ValueError):
            return False

    def run(self, task: Any, on_start: Callable | None, stop: Any, on_enter: Callable | None) -> tuple[Any, bool]:
        """The run's outcome, and whether this child may serve another run."""
        import cloudpickle

        from .execution import RunOutcome, error_dict

        started: float | None = None
        stop_asked: float | None = None
        self.send(("run", cloudpickle.dumps(task)))
        while not self.messages.closed:
            for message in self.messages.poll(POLL):
                kind = message[0]
                if kind == "start":
                    started = message[1]
                    if on_start is not None:
                        on_start(task.uid, started)
                elif kind == "enter" and on_enter is not None:
                    on_enter()
                elif kind == "outcome":
                    outcome = pickle.loads(message[1])
                    timed_out = (outcome.error or {}).get("type") == "TimeoutError"
                    return outcome, stop_asked is None and not timed_out
                elif kind == "error":  # the task could not be loaded there: the user's code never ran
                    now = time.time()
                    return RunOutcome(task.uid, "failed", task.attempt, now, now, error=message[1]), True
            now = time.time()
            if stop is not None and stop.is_set() and stop_asked is None:
                stop_asked = now
                self.send(("stop",))
            overdue = stop_asked is not None and now > stop_asked + KILL_GRACE
            late = bool(task.timeout) and started is not None and now > started + task.timeout + KILL_GRACE
            if overdue or late:  # it does not stop: end its process
                self.kill()
                if overdue:
                    error = error_dict("CancelledError", "run was cancelled while running")
                else:
                    error = error_dict("TimeoutError", f"run exceeded its timeout of {task.timeout:g} s")
                state = "cancelled" if overdue else "failed"
                return RunOutcome(task.uid, state, task.attempt, started or now, time.time(), error=error), False
        return self._lost(task, started), False

    def _lost(self, task: Any, started: float | None) -> Any:
        from .errors import WorkerLostError
        from .execution import RunOutcome, error_record

        code = self.process.wait()
        exc = WorkerLostError(
            f"the run's own process (pid {self.process.pid}) exited with code {code} before it reported"
        )
        error = {**error_record(exc, f"worker lost: {exc}"), "type": "WorkerLostError"}
        now = time.time()
        return RunOutcome(task.uid, "failed", task.attempt, started or now, now, error=error)

    def kill(self) -> None:
        self.process.kill()
        self.close()

    def close(self) -> None:
        """End of input: an idle child exits at once."""
        try:
            self.stdin.close()
        except OSError:
            pass
        try:
            self.process.wait(KILL_GRACE)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.read >= 0:
            os.close(self.read)
            self.read = -1


class ChildPool:
    """Child processes by environment, kept idle between runs (at most ``max_idle`` of them)."""

    def __init__(self, max_idle: int | None = None):
        self.max_idle = max_idle or max(2, os.cpu_count() or 2)
        self._idle: collections.OrderedDict[tuple, list[_Child]] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._closed = False

    def execute(
        self,
        task: Any,
        on_start: Callable[[str, float], None] | None = None,
        stop: Any = None,
        on_enter: Callable[[], None] | None = None,
    ) -> Any:
        """``execute(task)`` in a child process whose environment has the task's env and secrets."""
        wanted = wanted_environment(task)
        key = tuple(sorted(wanted.items()))
        child = self._take(key) or _Child({**os.environ, **wanted})
        keep = False
        try:
            outcome, keep = child.run(task, on_start, stop, on_enter)
            return outcome
        finally:
            if not (keep and self._give(key, child)):
                child.close()

    def _take(self, key: tuple) -> _Child | None:
        with self._lock:
            children = self._idle.get(key)
            while children:
                child = children.pop()
                if child.process.poll() is None:
                    return child
                child.close()
        return None

    def _give(self, key: tuple, child: _Child) -> bool:
        evicted = []
        with self._lock:
            if self._closed:
                return False
            self._idle.setdefault(key, []).append(child)
            self._idle.move_to_end(key)
            while sum(map(len, self._idle.values())) > self.max_idle:
                oldest = next(iter(self._idle))
                evicted.append(self._idle[oldest].pop(0))
                if not self._idle[oldest]:
                    del self._idle[oldest]
        for old in evicted:
            old.close()
        return True

    def close(self) -> None:
        """End every idle child (busy ones end when their run does)."""
        with self._lock:
            self._closed = True
            children = [child for group in self._idle.values() for child in group]
            self._idle.clear()
        for child in children:
            child.close()


_default: ChildPool | None = None
_default_lock = threading.Lock()


def default_pool() -> ChildPool:
    """This process's pool (for engines' worker processes); its children exit with it."""
    global _default
    with _default_lock:
        if _default is None:
            _default = ChildPool()
        return _default


def _child(write_fd: int) -> None:
    """The child's side: runs arrive on stdin and execute one at a time in a runner thread (so
    that this thread can take a stop request meanwhile); starts and outcomes go back on the pipe."""
    import cloudpickle

    from .execution import StopSignal, error_record, execute

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's: it cancels the runs itself
    out = os.fdopen(write_fd, "wb", buffering=0)
    lock = threading.Lock()

    def send(message: Any) -> None:
        with lock:
            out.write(_frame(message))

    control = sys.stdin.buffer
    runs: queue.Queue = queue.Queue()
    latest = StopSignal()  # the stop of the run sent last (the parent sends one run at a time)

    def runner() -> None:
        while True:
            item = runs.get()
            if item is None:
                return
            task, stop = item
            outcome = execute(task, lambda uid, at: send(("start", at)), stop, lambda: send(("enter",)))
            send(("outcome", cloudpickle.dumps(outcome)))

    worker = threading.Thread(target=runner, name="shoal-isolated-run", daemon=True)
    worker.start()
    while True:
        size = control.read(_FRAME)
        if len(size) < _FRAME:  # the parent closed our input (idle), or died: stop and leave
            latest.set()
            runs.put(None)
            worker.join(KILL_GRACE)
            return
        message = pickle.loads(control.read(int.from_bytes(size, "big")))
        if message[0] == "path":
            sys.path[:] = message[1]
        elif message[0] == "stop":
            latest.set()
        elif message[0] == "run":
            try:
                task = cloudpickle.loads(message[1])
                latest = StopSignal()
                runs.put((task, latest))
            except Exception as exc:  # noqa: BLE001 - e.g. a module the task refers to is missing here
                send(("error", error_record(exc)))


if __name__ == "__main__":
    try:
        _child(int(sys.argv[1]))
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001 - exiting anyway
                pass
    os._exit(0)
