"""Pins the Dask internals shoal relies on (``shoal.backends.dask._compat``): a Dask upgrade that
changes them fails here, by name."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("distributed")

from shoal.backends.dask._compat import next_ready_call  # noqa: E402


def queued_marker(value: int) -> int:
    return value


def peek_when_told(event_name: str) -> tuple[str, tuple]:
    """Runs on a worker: waits until the test says the next task is queued there, then peeks."""
    from distributed import Event, get_worker

    Event(event_name).wait(timeout=60)
    call = next_ready_call(get_worker())
    return ("none", ()) if call is None else (call[0].__name__, call[1])


def test_next_ready_call_sees_the_task_queued_behind_the_running_one(dask_backend):
    from distributed import Event

    client = dask_backend.client
    worker = sorted(client.scheduler_info()["workers"])[0]
    name = f"pin-{time.monotonic_ns()}"
    go = Event(name, client=client)
    running = client.submit(peek_when_told, name, workers=[worker], pure=False)
    queued = client.submit(queued_marker, 42, workers=[worker], pure=False)
    try:
        for _ in range(600):  # bounded: until the scheduler has handed the queued task to the worker
            if queued.key in {str(key) for key in client.processing([worker]).get(worker, ())}:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the second task never reached the worker")
        go.set()
        assert running.result(timeout=60) == ("queued_marker", (42,))
        assert queued.result(timeout=60) == 42
    finally:
        go.set()


def test_next_ready_call_is_none_where_nothing_is_queued():
    class NoState:
        pass

    assert next_ready_call(NoState()) is None
