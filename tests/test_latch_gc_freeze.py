"""The done flag of handles and futures (``shoal.latch``) and the GC scope of maps (``shoal.gc_freeze``)."""

from __future__ import annotations

import gc
import threading

import pytest

from shoal import gc_freeze
from shoal.gc_freeze import older_objects_frozen
from shoal.latch import Latch


def test_latch_wakes_a_thread_that_waited_before_it_was_set():
    latch, woke = Latch(), threading.Event()
    waiting = threading.Thread(target=lambda: latch.wait() and woke.set())
    waiting.start()
    assert not latch.is_set()
    latch.set()
    waiting.join()
    assert woke.is_set() and latch.is_set()


def test_latch_set_first_answers_at_once_and_timeout_reports_false():
    latch = Latch()
    assert latch.wait(0) is False
    latch.set()
    assert latch.wait() is True and latch.wait(0) is True


def test_older_objects_are_frozen_only_inside_and_nested_blocks_unfreeze_once():
    if gc.get_freeze_count():
        pytest.skip("this process froze objects itself: older_objects_frozen leaves them alone")
    with older_objects_frozen():
        assert gc.get_freeze_count() > 0
        with older_objects_frozen():
            pass
        assert gc.get_freeze_count() > 0  # the outer block still holds them
    assert gc.get_freeze_count() == 0


def test_garbage_made_inside_is_still_collected():
    class Node:
        pass

    with older_objects_frozen():
        node = Node()
        node.self = node  # a cycle: only the collector frees it
        alive = [node]
        del node
        alive.clear()
        gc.collect()
        assert not any(type(o) is Node for o in gc.get_objects())


def test_an_application_freeze_is_left_alone():
    gc.freeze()
    try:
        with older_objects_frozen():
            assert not gc_freeze._ours  # it saw the application's freeze and froze nothing itself
        # ... and left it in place (the exact count may fall: other threads free frozen objects)
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_full_collections_are_rarer_inside_and_the_threshold_comes_back_after():
    if gc.get_freeze_count():
        pytest.skip("this process froze objects itself")
    before = gc.get_threshold()
    with older_objects_frozen():
        assert gc.get_threshold()[2] >= gc_freeze.FULL_COLLECTION_EVERY
        with older_objects_frozen():  # nested: still deferred, restored only by the outermost
            pass
        assert gc.get_threshold()[2] >= gc_freeze.FULL_COLLECTION_EVERY
    assert gc.get_threshold() == before
