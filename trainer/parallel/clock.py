"""A run clock every rank agrees on, so a time budget stops all ranks at the same step.

Each rank measuring its own wall clock could see the budget run out one step apart from
another rank; the early one would leave while the other waits in a collective forever, and
a time-based learning rate would differ between replicas. The clock's reading is the
maximum over all ranks: one sum per reading of a table with a row per rank (each rank fills its
own; trainer/parallel/host_sum.py), which also carries whether any rank has seen a stop signal,
so that every rank saves and stops at the same step.

Readings are not taken every step: after each one the clock plans the next from agreed numbers
only (the step, the agreed seconds and the seconds per step since the last reading), so every rank
plans the same step and none waits in a collective the others skip. The gap is at most MAX_GAP_S
seconds (a stop signal is acted on within it; the launcher's grace period is 15 s by default) and
MAX_GAP_STEPS steps, and at most half of the budget left, so readings close in on the budget's end
and the run stops within a step of it.
"""
import math
import time
from typing import Optional, Tuple

import numpy as np

MAX_GAP_S = 5.0
MAX_GAP_STEPS = 50

from trainer.parallel.context import ParallelContext


class RunClock:
    """Seconds of training so far (including `already`, the time of the runs this one resumes)."""

    def __init__(self, ctx: Optional[ParallelContext] = None, already: float = 0.0):
        self.start = time.time() - already
        self.agreed = already  # the last reading every rank agreed on (agree())
        self.next_step = 0  # the first step at which `due` says to read again
        self._last: Optional[Tuple[int, float]] = None  # (step, agreed seconds) of the last planned reading
        self._sum, self._rank, self._world = None, 0, 1
        if ctx is not None and ctx.plan.world_size > 1:
            from trainer.parallel.host_sum import world_sum

            self._sum, self._rank, self._world = world_sum(ctx), ctx.rank, ctx.plan.world_size

    def local(self) -> float:
        """This rank's own reading: no communication, safe where ranks are not in step."""
        return time.time() - self.start

    def elapsed(self) -> float:
        """Seconds since the (first) start, the same on every rank; all ranks must call it together."""
        return self.agree(False)[0]

    def agree(self, flag: bool) -> Tuple[float, bool]:
        """(elapsed seconds, whether any rank's `flag` is set), the same on every rank; all ranks
        must call it together."""
        local = self.local()
        if self._sum is None:
            self.agreed = local
            return local, flag
        table = np.zeros((self._world, 2), np.float32)
        table[self._rank] = local, float(flag)
        both = self._sum(table).max(axis=0)
        self.agreed = float(both[0])
        return self.agreed, bool(both[1])

    def due(self, step: int) -> bool:
        """Whether every rank reads the clock after `step` (always without other ranks: no communication)."""
        return self._sum is None or step >= self.next_step

    def plan_next(self, step: int, budget: Optional[float]) -> int:
        """After a reading at `step`: the step of the next one, from agreed numbers only (see the module)."""
        last, self._last = self._last, (step, self.agreed)
        gap = 1
        if last is not None and step > last[0]:
            per_step = max((self.agreed - last[1]) / (step - last[0]), 1e-6)
            window = min(MAX_GAP_S, (budget - self.agreed) / 2 if budget else math.inf)
            gap = max(1, min(MAX_GAP_STEPS, int(window / per_step)))
        self.next_step = step + gap
        return self.next_step
