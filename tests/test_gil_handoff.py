"""A worker's background trial work runs under a short GIL switch interval, and the process's own
interval comes back after it (``shoal.tuning.gil_handoff``)."""

from __future__ import annotations

import concurrent.futures as cf
import sys
import threading

import pytest

from shoal.tuning import gil_handoff
from shoal.tuning.gil_handoff import BACKGROUND_SWITCH_INTERVAL, yielding


@pytest.fixture(autouse=True)
def default_interval():
    before = sys.getswitchinterval()
    sys.setswitchinterval(0.005)
    yield
    sys.setswitchinterval(before)


def test_a_job_runs_under_the_short_interval_and_the_old_one_comes_back():
    seen = yielding(sys.getswitchinterval)()
    assert seen == pytest.approx(BACKGROUND_SWITCH_INTERVAL)
    assert sys.getswitchinterval() == pytest.approx(0.005)


def test_the_interval_comes_back_when_the_job_raises():
    def fails():
        raise ValueError("storage hiccup")

    with pytest.raises(ValueError, match="storage hiccup"):
        yielding(fails)()
    assert sys.getswitchinterval() == pytest.approx(0.005)


def test_overlapping_jobs_keep_it_short_until_the_last_ends():
    first_in, release_first = threading.Event(), threading.Event()

    def first():
        first_in.set()
        release_first.wait(30)
        return sys.getswitchinterval()

    with cf.ThreadPoolExecutor(1) as pool:
        running = pool.submit(yielding(first))
        assert first_in.wait(30)
        during_second = yielding(sys.getswitchinterval)()  # starts and ends while the first runs
        still_short = sys.getswitchinterval()
        release_first.set()
        during_first = running.result(30)
    assert during_second == pytest.approx(BACKGROUND_SWITCH_INTERVAL)
    assert still_short == pytest.approx(BACKGROUND_SWITCH_INTERVAL)  # the first is still running
    assert during_first == pytest.approx(BACKGROUND_SWITCH_INTERVAL)
    assert sys.getswitchinterval() == pytest.approx(0.005)
    assert gil_handoff._running == 0


def test_an_interval_the_application_sets_meanwhile_is_kept():
    def sets_its_own():
        sys.setswitchinterval(0.002)

    yielding(sets_its_own)()
    assert sys.getswitchinterval() == pytest.approx(0.002)


def test_an_interval_already_shorter_is_left_as_it_is():
    sys.setswitchinterval(0.0001)
    seen = yielding(sys.getswitchinterval)()
    assert seen == pytest.approx(0.0001)
    assert sys.getswitchinterval() == pytest.approx(0.0001)
