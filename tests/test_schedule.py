"""Learning-rate schedules, including the budget-aware cosine, and the run clock."""
import math
import time

import pytest

from trainer.parallel.clock import RunClock
from trainer.loop.schedule import learning_rate


def test_warmup_is_linear_then_inverse_sqrt():
    assert learning_rate(1, 1e-3, 100) == pytest.approx(1e-5)
    assert learning_rate(100, 1e-3, 100) == pytest.approx(1e-3)
    assert learning_rate(400, 1e-3, 100) == pytest.approx(5e-4)


def test_cosine_by_steps_ends_at_min_lr():
    kw = dict(peak=1e-3, warmup=10, schedule="cosine", total_steps=110, min_lr=1e-5)
    assert learning_rate(10, **kw) == pytest.approx(1e-3)
    assert learning_rate(60, **kw) == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5))
    assert learning_rate(110, **kw) == pytest.approx(1e-5)
    assert learning_rate(500, **kw) == pytest.approx(1e-5)  # past the end: stays at the floor


def test_cosine_follows_the_time_budget_when_it_runs_out_first():
    kw = dict(peak=1e-3, warmup=10, schedule="cosine", total_steps=100_000, min_lr=0.0)
    assert learning_rate(20, time_fraction=0.5, **kw) == pytest.approx(0.5e-3)
    assert learning_rate(20, time_fraction=1.0, **kw) == pytest.approx(0.0, abs=1e-12)
    quarter = 0.5e-3 * (1 + math.cos(math.pi * 0.25))
    assert learning_rate(20, time_fraction=0.25, **kw) == pytest.approx(quarter)
    # the step share wins when it is further along than the clock
    steps_first = dict(kw, total_steps=110)
    assert learning_rate(60, time_fraction=0.1, **steps_first) == pytest.approx(0.5e-3)
    # warmup is counted in steps whatever the clock says
    assert learning_rate(5, time_fraction=0.9, **kw) == pytest.approx(0.5e-3)


def test_cosine_without_an_end_is_an_error():
    with pytest.raises(ValueError, match="time_budget_minutes"):
        learning_rate(20, 1e-3, 10, "cosine")
    assert learning_rate(20, 1e-3, 10, "cosine", time_fraction=0.0) == pytest.approx(1e-3)


def test_run_clock_counts_resumed_time():
    clock = RunClock(already=100.0)
    first = clock.elapsed()
    assert 100.0 <= first < 101.0
    time.sleep(0.01)
    assert clock.local() > first and clock.elapsed() >= clock.local() - 1e-3
