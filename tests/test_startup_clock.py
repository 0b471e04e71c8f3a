"""The start-up clock: phases closed in order from the launcher's spawn time (trainer/loop/startup.py)."""
import pytest

from trainer.loop.startup import SPAWNED_AT, StartupClock


class FakeTime:
    def __init__(self, t):
        self.t = t

    def __call__(self):
        return self.t


def test_phases_run_from_the_spawn_time_and_add_up():
    now = FakeTime(104.0)
    clock = StartupClock({SPAWNED_AT: "100.0"}, now)  # imports: spawn (100) to now (104)
    now.t = 105.5
    clock.close("cluster")
    now.t = 109.0
    clock.close("first update")
    assert clock.phases == [("imports", 4.0), ("cluster", 1.5), ("first update", 3.5)]
    assert clock.record() == {"total_s": 9.0, "imports_s": 4.0, "cluster_s": 1.5, "first_update_s": 3.5}
    line = clock.line(resumed=True)
    assert line == "start-up (resumed): 9.0 s from spawn to the first update (imports 4.0, cluster 1.5, first update 3.5)"


def test_without_a_launcher_the_clock_starts_at_construction():
    now = FakeTime(50.0)
    clock = StartupClock({}, now)
    now.t = 52.0
    clock.close("data")
    assert clock.phases == [("data", 2.0)]
    assert clock.line().startswith("start-up: 2.0 s from train() to the first update")


def test_a_spawn_time_that_is_not_a_number_is_named():
    with pytest.raises(ValueError, match="MINDRUN_SPAWNED_AT='yesterday'"):
        StartupClock({SPAWNED_AT: "yesterday"}, FakeTime(0.0))
