"""The recorder's group commit: while many outcomes are due, the writer lingers and a stream of them
lands in a few transactions; with few due, each outcome is written at once, on its own (the next
tuning trial waits on it). Real SQLite store.

Nothing here depends on how fast the machine is: the linger is stretched far beyond any scheduling
delay, so what is asserted (how many transactions the writes took, and that a writer with few due
never waits) follows from the recorder's rules alone, never from the pace of the outcomes.
"""

from __future__ import annotations

import threading
from datetime import datetime, timezone

import pytest

import shoal.recorder
from shoal.recorder import LINGER_MIN_DUE, Recorder
from shoal.testing import wait_for

STREAM = 60
SAFETY_NET = 120.0  # seconds: a linger this long is never what ends a batch; the test ends first


@pytest.fixture(autouse=True)
def endless_linger(monkeypatch):
    """A linger only the recorder's rules can end (an outcome due no more, a full batch)."""
    monkeypatch.setattr(shoal.recorder, "LINGER", SAFETY_NET)
    monkeypatch.setattr(shoal.recorder, "LINGER_GAP", SAFETY_NET, raising=False)  # a gap ends it, where there is one


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


def hand_over(recorder, uid) -> threading.Event:
    """Give the recorder one outcome; the event is set once it is committed."""
    written = threading.Event()
    fields = {"state": "completed", "results": {"ok": 1}, "ended_at": datetime.now(timezone.utc)}
    recorder.finished(uid, fields, [], lambda problem: written.set())
    return written


def test_many_due_outcomes_share_one_transaction(project):
    """Outcomes arrive one by one while more are due: the writer waits for them, however slowly
    they come, and commits them together once no more are due (the last arrival may miss the batch
    it ends: then it is the only one written on its own)."""
    store = project.store
    uids = pending_runs(store, STREAM)
    calls = counting(store)
    recorder = Recorder(store)
    recorder.expect(LINGER_MIN_DUE - 1 + STREAM)  # the last outcome leaves fewer than LINGER_MIN_DUE due
    written = []
    for uid in uids:
        written.append(hand_over(recorder, uid))
        # The writer took it (its queue is empty again) and holds it, waiting for the rest.
        wait_for(recorder._queue.empty, what="the writer taking the outcome")
        assert calls == [] or uid == uids[-1], calls
    assert all(event.wait(SAFETY_NET / 2) for event in written), "outcomes not committed"
    recorder.flush()
    assert sum(calls) == STREAM and calls[0] >= STREAM - 1, calls
    assert all(store.get_run(uid).state == "completed" for uid in uids)


def test_few_due_outcomes_are_written_at_once_each_on_its_own(project):
    """With few due, the writer never lingers: each outcome is committed before the next is handed
    over (as a tuning search of parallelism 2 waits on its trial), so a writer that waited for
    company would hold the first one for the whole safety net."""
    store = project.store
    uids = pending_runs(store, STREAM)
    calls = counting(store)
    recorder = Recorder(store)
    for uid in uids:
        recorder.expect(1)
        assert hand_over(recorder, uid).wait(SAFETY_NET / 2), "the writer waited for more outcomes"
    recorder.flush()
    assert calls == [1] * STREAM
    assert all(store.get_run(uid).state == "completed" for uid in uids)


def test_outcomes_of_a_few_batched_tasks_are_written_at_once(project):
    """Many runs due, but in a few engine tasks (a map in a few batches, a search whose tasks carry
    several trials): a task's outcomes arrive together, so the writer counts tasks, not runs, and
    writes each arrival at once instead of lingering for the next."""
    store = project.store
    per_task = 20
    uids = pending_runs(store, STREAM)
    calls = counting(store)
    recorder = Recorder(store)
    recorder.expect(STREAM)  # 60 runs due ...
    for _ in range(STREAM // per_task):
        recorder.batched(per_task)  # ... in 3 tasks: fewer than LINGER_MIN_DUE arrivals
    for start in range(0, STREAM, per_task):
        events = []
        for uid in uids[start : start + per_task]:
            written = threading.Event()
            fields = {"state": "completed", "results": {}, "ended_at": datetime.now(timezone.utc)}
            recorder.finished(uid, fields, [], lambda problem, written=written: written.set(), share=1 / per_task)
            events.append(written)
        assert all(event.wait(SAFETY_NET / 2) for event in events), "the writer waited for the next task's outcomes"
    recorder.flush()
    assert sum(calls) == STREAM
    assert all(store.get_run(uid).state == "completed" for uid in uids)


def test_a_writer_behind_takes_the_whole_backlog_and_says_so(project, monkeypatch, caplog):
    """While one write is held up, outcomes pile up: the next batch takes all of them (not a fixed
    few hundred), and the wait is logged, not silent."""
    monkeypatch.setattr(shoal.recorder, "BACKLOG_WARN", 0.0)  # any wait counts as behind
    monkeypatch.setattr(shoal.recorder, "BACKLOG_WARN_EVERY", 0.0)  # and is logged every time
    store = project.store
    backlog = 1200
    uids = pending_runs(store, backlog + 1)
    calls = counting(store)
    held, release = threading.Event(), threading.Event()
    counted = store.finish_runs

    def finish_runs(items):
        if not held.is_set():  # the first write waits until the backlog is queued
            held.set()
            assert release.wait(SAFETY_NET / 2)
        return counted(items)

    store.finish_runs = finish_runs
    recorder = Recorder(store)
    hand_over(recorder, uids[0])
    assert held.wait(SAFETY_NET / 2), "the first write did not start"
    written = [hand_over(recorder, uid) for uid in uids[1:]]
    wait_for(lambda: recorder._queue.qsize() == backlog, what="the backlog queued")
    with caplog.at_level("WARNING", logger="shoal.recorder"):
        release.set()
        assert all(event.wait(SAFETY_NET / 2) for event in written)
        recorder.flush()
    assert calls == [1, backlog], calls
    assert any(f"behind: writing {backlog} outcome(s)" in record.getMessage() for record in caplog.records)
    assert store.count_runs(state="completed") == backlog + 1
