"""A run clock every rank agrees on, so a time budget stops all ranks at the same step.

Each rank measuring its own wall clock could see the budget run out one step apart from
another rank; the early one would leave while the other waits in a collective forever, and
a time-based learning rate would differ between replicas. The clock's reading is the
maximum over all ranks: one scalar AllGather per reading (AllReduce only sums on CPU).
"""
import time
from typing import Optional

from trainer.parallel.context import ParallelContext


class RunClock:
    """Seconds of training so far (including `already`, the time of the runs this one resumes)."""

    def __init__(self, ctx: Optional[ParallelContext] = None, already: float = 0.0):
        self.start = time.time() - already
        self._gather = None
        if ctx is not None and ctx.plan.world_size > 1:
            from mindspore import ops

            self._gather = ops.AllGather()

    def local(self) -> float:
        """This rank's own reading: no communication, safe where ranks are not in step."""
        return time.time() - self.start

    def elapsed(self) -> float:
        """Seconds since the (first) start, the same on every rank; all ranks must call it together."""
        local = self.local()
        if self._gather is None:
            return local
        import mindspore as ms

        return float(self._gather(ms.Tensor([local], ms.float32)).asnumpy().max())
