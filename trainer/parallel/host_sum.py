"""Sums over a process group from host code: validation's loss sums and hypothesis tables.

MindSpore runs a collective primitive called outside a compiled graph in PyNative mode, and documents
PyNative communication over a sub-group as unsupported unless the job was started by mpirun; validation's
data-parallel group under dp x mp is such a sub-group (the CPU runs it anyway, which is why the tests could
not see it). `GroupSum` is a Cell: in graph mode, the trainer's, calling it compiles the AllReduce into a
graph of its own (once per input shape, so once or twice a run), as the train step's collectives are.
Collectives over the world group (checkpoint commit and resume, the run clock, the storage probe) stay
host-side: MindSpore supports those in PyNative.
"""
from mindspore import nn, ops


class GroupSum(nn.Cell):
    """Element-wise sum of a tensor over the ranks of `group` (every rank of it calls this together)."""

    def __init__(self, group: str):
        super().__init__()
        self.all_reduce = ops.AllReduce(ops.ReduceOp.SUM, group)

    def construct(self, x):
        return self.all_reduce(x)
