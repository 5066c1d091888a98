"""The recorder's group commit: a stream of outcomes, while many are due, lands in a few
transactions; with few due, each outcome is written on its own (the next tuning trial waits on it).
Real SQLite store; no timing is asserted, only how many transactions the writes took."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timezone

import pytest

from shoal.recorder import LINGER_MIN_DUE, Recorder


def pending_runs(store, count):
    uids = [f"{i:032x}" for i in range(1, count + 1)]
    store.create_runs([{"uid": uid, "function": "f", "function_hash": "0" * 64} for uid in uids])
    return uids


def counting(store):
    calls = []
    original = store.finish_runs

    def finish_runs(items):
        calls.append(len(items))
        return original(items)

    store.finish_runs = finish_runs
    return calls


def stream(recorder, uids, pause):
    """Hand over one outcome every ``pause`` seconds; return once all are written."""
    done = threading.Semaphore(0)
    now = datetime.now(timezone.utc)
    for uid in uids:
        fields = {"state": "completed", "results": {"ok": 1}, "ended_at": now}
        recorder.finished(uid, fields, [], lambda problem: done.release())
        time.sleep(pause)
    for _ in uids:
        assert done.acquire(timeout=60)


@pytest.mark.parametrize(("due", "pause"), [(LINGER_MIN_DUE + 100, 0.004), (1, 0.02)])
def test_many_due_outcomes_share_transactions_few_do_not(project, due, pause):
    """Outcomes arrive ``pause`` apart, slower than a one-row write, so only lingering batches them."""
    store = project.store
    uids = pending_runs(store, 60)
    calls = counting(store)
    recorder = Recorder(store)
    recorder.expect(due)
    stream(recorder, uids, pause)
    recorder.flush()
    assert sum(calls) == len(uids)
    assert all(store.get_run(uid).state == "completed" for uid in uids)
    if due > LINGER_MIN_DUE:
        assert len(calls) <= len(uids) // 4, calls
    else:
        assert max(calls) <= 2 and len(calls) >= len(uids) // 2, calls
