"""Starts of runs on Ray: workers announce only runs that last (``shoal.backends.ray.announce``);
a short run's start comes with its outcome, and a retried run keeps its first attempt's start."""

from __future__ import annotations

import pytest

pytest.importorskip("ray")

import shoal  # noqa: E402

from handler_sources import handler_functions  # noqa: E402

FIRST_FAILS = """
import pathlib
import time


def first_fails(marker: str):
    path = pathlib.Path(marker)
    if not path.exists():
        path.write_text(repr(time.time()))  # after this attempt's start, before the next one's
        raise RuntimeError("transient")
    return {"attempted": True}
"""


def test_a_retried_run_keeps_the_start_of_its_first_attempt(ray_backend, project, tmp_path):
    source = tmp_path / "first_fails.py"
    source.write_text(FIRST_FAILS)
    fn = shoal.Function.from_file(source, "first_fails", retries=1)
    warm = tmp_path / "warm"
    warm.touch()  # runs that succeed at once: both workers have the code loaded, so attempts are short
    fn.map([{"marker": str(warm)}] * 4, backend=ray_backend, project=project)
    markers = [tmp_path / f"marker{i}" for i in range(4)]
    runs = fn.map([{"marker": str(marker)} for marker in markers], backend=ray_backend, project=project)
    for run, marker in zip(runs, markers):
        assert run.state == "completed" and run.attempts == 2, run.error
        first_attempt_ran_at = float(marker.read_text())
        assert run.started_at.timestamp() <= first_attempt_ran_at + 1e-6  # recorded to the microsecond
        assert project.runs.get(run.uid).started_at == run.started_at


def test_short_runs_are_recorded_with_their_start(ray_backend, project, tmp_path):
    runs = handler_functions(tmp_path)("square").map(list(range(20)), backend=ray_backend, project=project)
    assert [r.state for r in runs] == ["completed"] * 20
    assert all(r.started_at is not None and r.started_at <= r.ended_at for r in runs)


class _Future:
    """What ``EndWatch`` settles: records the value."""

    def __init__(self) -> None:
        self.values: list = []

    def settle(self, value) -> None:
        self.values.append(value)


def test_the_end_watch_says_busy_while_many_ends_are_due(monkeypatch):
    """The start pipe's reader lets ends gather only while many are due: a lone run's end (or a
    small search's) is read at once (``shoal.backends.ray.start.GATHER``)."""
    import base64

    from shoal.backends.ray import ends

    monkeypatch.setattr(ends, "POLL", 60.0)  # no look at Ray while the test runs
    watch = ends.EndWatch()
    try:
        futures = {watch.token(): _Future() for _ in range(ends.BUSY_FROM + 1)}
        for token, future in futures.items():
            assert watch.watch(token, future, ref=None)
        tokens = list(futures)
        value = base64.b64encode(b"outcome").decode()
        assert watch.ended([(tokens[0], value)]) is True  # BUSY_FROM still awaited
        assert futures[tokens[0]].values == [b"outcome"]
        assert watch.ended([(tokens[1], value)]) is False  # fewer: each end at once
    finally:
        watch.close()
