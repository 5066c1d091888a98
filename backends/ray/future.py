"""``RayFuture``: a ``SettledFuture`` settled once the task's ObjectRef is done (told by the task's end
line, ``.ends``, or by Ray's completion callback), and how Ray's failures translate into the
contract's (``WorkerLostError``, ``CancelledError``, ``BackendError``)."""

from __future__ import annotations

import concurrent.futures as cf
import time
from typing import TYPE_CHECKING, Any

from shoal.errors import BackendError, WorkerLostError
from shoal.execution import RunBatch, RunOutcome, RunTask, error_dict

from ..base import SettledFuture
from .worker import returned_outcome

if TYPE_CHECKING:  # pragma: no cover
    from .backend import RayBackend
    from .echo import EchoPipe

#: Ray exceptions that mean the process or node running the task died.
_LOST = frozenset(
    {"WorkerCrashedError", "NodeDiedError", "OutOfMemoryError", "LocalRayletDiedError", "ObjectLostError"}
)


class RayFuture(SettledFuture):
    """A Ray ObjectRef of an encoded RunOutcome (a batch's list of them); settled when the task ends
    (by the start pipe's reader, or on Ray's callback thread after ``listen``), or by the backend
    closing (cancelled)."""

    def __init__(self, task: RunTask | RunBatch, ref: Any, backend: RayBackend, echo: EchoPipe | None = None):
        super().__init__(task.uid)
        self.uids = task.uids
        self._echo = echo  # the pipe its watched output comes through: shown before it settles
        self._batch = isinstance(task, RunBatch)
        self._attempt = task.attempt
        self._ref = ref
        self._backend = backend
        self._killed = False  # force-cancelled while running
        self._listening = False  # settled by Ray's callback (else by the task's end line)

    def listen(self) -> None:
        """Settle on Ray's completion callback (on Ray's io thread; on this one if already done):
        used only where no end line comes (a cancelled task, a joined cluster), so the public
        ``ObjectRef.future()`` costs nothing that counts."""
        ref = self._ref
        if ref is not None:
            self._listening = True
            ref.future().add_done_callback(self._settle_done)

    def _settle_done(self, done: cf.Future) -> None:
        """``settle`` with a done Ray future's value, or its error (a task's error is an instance of
        its cause too: ``future()`` gives it so)."""
        try:
            error = done.exception()
        except cf.CancelledError as cancelled:  # nobody cancels Ray's future; if so, as Ray's cancel
            error = cancelled
        self.settle(done.result() if error is None else error)

    def settle(self, value: Any) -> None:
        """Ray's answer (an encoded outcome or list of outcomes, or Ray's error) as the future's result."""
        if self.done():
            return  # already settled (the backend closed before Ray answered)
        if self._echo is not None:
            self._echo.flush()
        try:
            value = returned_outcome(value)
        except Exception as exc:  # noqa: BLE001 - reported as the engine's failure
            value = exc
        self._ref = None  # let Ray free the stored outcome
        if isinstance(value, (RunOutcome, list)):
            self._backend.ended_unannounced(value if isinstance(value, list) else [value])
            self.resolve(value)  # type: ignore[arg-type]
        elif self._killed and self._batch:
            self.resolve(None, cf.CancelledError(f"batch {self.uid} was stopped by killing its worker"))
        elif self._killed:
            self.resolve(self._killed_outcome())
        else:
            self.resolve(None, engine_error(value))

    def _killed_outcome(self) -> RunOutcome:
        """A run stopped by killing its worker ran, so it is not "cancelled before it started"."""
        grace = self._backend.cancel_grace
        message = f"run was cancelled while running; it ignored the interrupt for {grace:g} s, so its worker was killed"
        return RunOutcome(
            uid=self.uid,
            state="cancelled",
            attempt=self._attempt,
            started_at=None,  # the driver knows it from the start report
            ended_at=time.time(),
            error=error_dict("CancelledError", message),
        )

    def as_argument(self) -> Any:
        """What a task that uses this one's outcome is given (a pipeline step after its producer):
        the ObjectRef while Ray holds the outcome (Ray then starts the task once it is done and
        hands it the value), else the outcome itself, None if it failed in the engine. Holding
        the ref read here keeps Ray's object alive even if this future settles meanwhile."""
        ref = self._ref
        if ref is not None:
            return ref
        self._done.wait()  # settled, or settling on another thread right now: within that call
        try:
            return self.result(0)
        except BaseException:  # noqa: BLE001 - an engine failure: no outputs to use
            return None

    def cancel(self) -> bool:
        """Drop the task if pending; interrupt it if running (it ends as cancelled)."""
        ref = self._ref
        if ref is None or self.done():
            return False
        import ray

        try:
            ray.cancel(ref)
        except Exception:  # noqa: BLE001 - finished or lost meanwhile: nothing left to cancel
            return False
        if not self._listening:  # a task cancelled before it ran writes no end line (see ``.ends``)
            self.listen()
        self._backend.kill_later(self)
        return True

    def kill(self) -> None:
        """Force-cancel a task that did not stop on its KeyboardInterrupt (kills its worker)."""
        ref = self._ref
        if ref is None or self.done():
            return
        import ray

        self._killed = True
        try:
            ray.cancel(ref, force=True)
        except Exception:  # noqa: BLE001
            pass


def engine_error(exc: Any) -> BaseException:
    """Ray's failure of a task as the contract names it."""
    import ray.exceptions as rex

    if not isinstance(exc, BaseException):
        return BackendError(f"ray returned {type(exc).__name__} where a run outcome was expected")
    if isinstance(exc, (cf.CancelledError, rex.TaskCancelledError)):
        return cf.CancelledError(str(exc).splitlines()[0] if str(exc) else "cancelled")
    if {kind.__name__ for kind in type(exc).__mro__} & _LOST:
        return WorkerLostError(f"the ray worker running it died ({type(exc).__name__}: {first_line(exc)})")
    if isinstance(exc, rex.RuntimeEnvSetupError):
        return BackendError(f"ray could not set up the run's environment (requirements): {first_line(exc)}")
    if isinstance(exc, Exception):
        return BackendError(f"ray failed to run the task: {type(exc).__name__}: {first_line(exc)}")
    return exc


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


__all__ = ["RayFuture", "engine_error", "first_line"]
