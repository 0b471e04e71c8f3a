"""trainer/parallel/affinity.unpinned: init() runs on every CPU, then every thread is pinned back."""
import os
import threading

import pytest

from trainer.parallel.affinity import unpinned

pytestmark = pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                                reason="needs Linux affinity and two CPUs")


def test_a_pinned_process_is_widened_inside_and_every_thread_pinned_back():
    before = os.sched_getaffinity(0)
    one = {min(before)}
    os.sched_setaffinity(0, one)
    try:
        inside, started, stop = [], threading.Event(), threading.Event()

        def worker():  # a thread started inside the block, like MindSpore's cluster threads
            started.set()
            stop.wait(10)

        with unpinned(before):
            inside.append(os.sched_getaffinity(0))
            thread = threading.Thread(target=worker)
            thread.start()
            started.wait(10)
        assert inside == [before]
        assert os.sched_getaffinity(0) == one
        assert os.sched_getaffinity(thread.native_id) == one  # the thread born wide is pinned back too
        stop.set()
        thread.join()
    finally:
        os.sched_setaffinity(0, before)


def test_an_unpinned_process_is_left_alone():
    before = os.sched_getaffinity(0)
    with unpinned(before):
        assert os.sched_getaffinity(0) == before
    assert os.sched_getaffinity(0) == before
