"""The run clock's readings with several ranks: planned from agreed numbers only, at most MAX_GAP_S apart,
closing in on the budget's end (trainer/parallel/clock.py)."""
from trainer.parallel.clock import MAX_GAP_STEPS, RunClock


def several_ranks():
    clock = RunClock()
    clock._gather = object()  # as with a data-parallel group: readings are collectives, planned
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


def test_two_ranks_with_the_same_agreed_readings_plan_the_same_steps():
    a, b = several_ranks(), several_ranks()
    plans = []
    for clock in (a, b):
        clock.plan_next(0, 60.0)
        steps = []
        for step, agreed in ((1, 0.7), (8, 5.6), (15, 10.4)):
            clock.agreed = agreed
            steps.append(clock.plan_next(step, 60.0))
        plans.append(steps)
    assert plans[0] == plans[1]
