"""A run clock every rank agrees on, so a time budget stops all ranks at the same step.

Each rank measuring its own wall clock could see the budget run out one step apart from
another rank; the early one would leave while the other waits in a collective forever, and
a time-based learning rate would differ between replicas. The clock's reading is the
maximum over all ranks: one AllGather per reading (AllReduce only sums on CPU), which also
carries whether any rank has seen a stop signal, so that every rank saves and stops at the
same step.
"""
import time
from typing import Optional, Tuple

from trainer.parallel.context import ParallelContext


class RunClock:
    """Seconds of training so far (including `already`, the time of the runs this one resumes)."""

    def __init__(self, ctx: Optional[ParallelContext] = None, already: float = 0.0):
        self.start = time.time() - already
        self.agreed = already  # the last reading every rank agreed on (agree())
        self._gather = None
        if ctx is not None and ctx.plan.world_size > 1:
            from mindspore import ops

            self._gather = ops.AllGather()

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
        if self._gather is None:
            self.agreed = local
            return local, flag
        import mindspore as ms

        both = self._gather(ms.Tensor([[local, float(flag)]], ms.float32)).asnumpy().max(axis=0)
        self.agreed = float(both[0])
        return self.agreed, bool(both[1])
