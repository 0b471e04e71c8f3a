"""The run clock's readings with several ranks: planned from agreed numbers only, at most MAX_GAP_S apart,
closing in on the budget's end (trainer/parallel/clock.py)."""
import numpy as np
import pytest

from trainer.parallel.clock import MAX_GAP_STEPS, RunClock


def several_ranks():
    clock = RunClock()
    clock._sum = object()  # as with a data-parallel group: readings are collectives, planned
    return clock


def test_readings_are_planned_from_agreed_numbers_and_close_in_on_the_budget():
    clock = several_ranks()
    assert clock.due(0) and clock.plan_next(0, budget=100.0) == 1  # no rate yet: the next step
    clock.agreed = 0.5
    assert clock.plan_next(1, budget=100.0) == 11  # 0.5 s a step: 5 s is 10 steps
    assert not clock.due(10) and clock.due(11)
    clock.agreed = 97.0
    assert clock.plan_next(200, budget=100.0) == 203  # 3 s left: read within half of it (1.5 s, 3 steps)
    clock.agreed = 101.0
    assert clock.plan_next(210, budget=100.0) == 211  # spent: every step (the trainer stops at this one)


def test_fast_steps_are_capped_and_a_lone_rank_reads_every_step():
    clock = several_ranks()
    clock.plan_next(0, None)
    clock.agreed = 0.001
    assert clock.plan_next(10, None) == 10 + MAX_GAP_STEPS
    alone = RunClock()
    assert all(alone.due(step) for step in range(5))


class FakeClockTime:
    """time.time() under the test's control."""

    def __init__(self, now=1000.0):
        self.now = now

    def time(self):
        return self.now


class SumWith:
    """One rank's sum over a pair of the [world, 2] table of (seconds, flag): its own row filled, its peer's
    filled with the peer's own reading."""

    def __init__(self, peer, peer_rank):
        self.peer, self.peer_rank = peer, peer_rank

    def __call__(self, table):
        summed = table.copy()
        summed[self.peer_rank] += np.array([self.peer.local(), 0.0], np.float32)
        return summed


def test_two_ranks_that_started_apart_agree_on_the_reading_and_plan_the_same_steps(monkeypatch):
    """Rank a started 3 s before rank b (a slower cluster join): both take the larger reading and plan
    the same next steps, although their own clocks differ at every step."""
    import trainer.parallel.clock as clock_module

    fake = FakeClockTime()
    monkeypatch.setattr(clock_module, "time", fake)
    a = RunClock()
    fake.now += 3.0
    b = RunClock()
    a._sum, a._rank, a._world = SumWith(b, 1), 0, 2
    b._sum, b._rank, b._world = SumWith(a, 0), 1, 2
    for clock in (a, b):
        clock.plan_next(0, 60.0)
    plans, readings = {"a": [], "b": []}, {"a": [], "b": []}
    for step in range(1, 40):
        fake.now += 0.7  # one step
        for name, clock in (("a", a), ("b", b)):
            if clock.due(step):
                assert a.local() - b.local() == pytest.approx(3.0)  # their own clocks differ
                seconds, _ = clock.agree(False)
                readings[name].append(seconds)
                plans[name].append(clock.plan_next(step, 60.0))
    assert readings["a"] == readings["b"] and readings["a"][0] == pytest.approx(3.7)  # the earlier start's
    assert plans["a"] == plans["b"] and len(plans["a"]) > 3
    assert plans["a"][1] - plans["a"][0] > 1  # readings spaced out once a rate is known
