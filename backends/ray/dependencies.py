"""Pipeline steps on Ray: a step's task gets its producers' ObjectRefs as arguments, so Ray starts
it once they are done and hands it their outcomes; the driver does not wait.

Workers import this module for ``run_after`` (Ray pickles it by reference), so it loads nothing of
the driver side at import time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from shoal.code import Code
from shoal.execution import RunOutcome

from ..task_codec import decode, encode
from .announce import write_end
from .worker import cancel_as_stop, returned_outcome, run_task, was_cancelled

if TYPE_CHECKING:  # pragma: no cover
    from shoal.execution import RunTask

    from ..base import BackendFuture, OnStart
    from ..dependencies import Prepare
    from .backend import RayBackend


def run_after(payload: bytes, *arguments: Any, carried: Code | None = None) -> bytes:
    """The Ray task of a step: ``payload`` is ``(task, start pipe, echo pipe, end, prepare, has
    code)`` encoded by the driver (one argument: Ray serialises each argument on its own, the
    largest part of a submission's cost); ``arguments`` are the list holding a large code's
    reference, if any, then the producers' outcomes (Ray resolved their ObjectRefs). ``prepare``
    swaps the references, or ends the step unrun. ``carried``: the code the remote function
    carries (``carrying_after``), for a task shipped without it."""
    end = None
    try:
        with cancel_as_stop(()) as setting_up:  # Ray's interrupt while decoding (imports) only marks it
            task, starts, echo, end, prepare, has_code = decode(payload)
            code, upstream = (arguments[0], arguments[1:]) if has_code else (carried, arguments)
            received = [returned_outcome(value) for value in upstream]  # Ray resolved them: encoded outcomes
            outcomes = [value if isinstance(value, RunOutcome) else None for value in received]
            prepared = prepare(task, outcomes)
    except BaseException:
        if end is not None:  # the driver then gets Ray's error (see ``run_task``)
            write_end(end[0], end[1], None)
        raise
    if isinstance(prepared, RunOutcome):
        value = encode(prepared)
        if end is not None:
            write_end(end[0], end[1], value)
        return value
    return run_task(prepared, starts, echo, code, end, cancelled_before=was_cancelled(setting_up))


def carrying_after(code: Code) -> Callable[..., bytes]:
    """``run_after`` with a function's code bound (as ``.worker.carrying``): the remote function of
    that code's steps, exported once, so each step's task ships without the code."""

    def run_step_carrying_code(payload: bytes, *arguments: Any) -> bytes:
        return run_after(payload, *arguments, carried=code)

    return run_step_carrying_code


def submit_after(
    backend: RayBackend,
    task: RunTask,
    after: Sequence[BackendFuture],
    prepare: Prepare,
    on_start: OnStart | None,
) -> BackendFuture:
    """``Backend.submit_after`` on Ray: each producer still running is its ObjectRef, one done is
    its outcome; a producer that is neither (waiting for another driver) makes the driver wait.
    Every step goes as a task of ``run_after`` (with its function's code bound, ``carrying_after``),
    also one that uses no step: the steps of one function share one Ray scheduling class, so workers
    are not leased anew between them."""
    from ..dependencies import AfterFuture, outcome_or_none
    from .future import RayFuture

    upstream: list[Any] = []
    for dep in after:
        if isinstance(dep, RayFuture):
            upstream.append(_as_argument(dep.as_argument()))
        elif dep.done():
            upstream.append(_as_argument(outcome_or_none(dep)))
        else:
            return AfterFuture(task, after, prepare, lambda prepared: backend.submit(prepared, on_start))
    return backend.submit(task, on_start, after=(prepare, upstream))


def _as_argument(value: Any) -> Any:
    """A producer's outcome as a task argument: encoded (Ray passes bytes as they are, while it
    pickles any other object with cloudpickle, measured several times slower), or its ObjectRef or
    None as they are (``run_after`` reads all three)."""
    return encode(value) if isinstance(value, RunOutcome) else value


__all__ = ["carrying_after", "run_after", "submit_after"]
