"""Collectives as conjugate pairs (Megatron-Core's mappings), each a Cell with its own bprop.

    CopyToGroup      forward: identity              backward: all-reduce (sum) over the group
    ReduceFromGroup  forward: all-reduce (sum)      backward: identity
    GatherLastDim    forward: all-gather, concat    backward: keep this rank's slice
                              on the last axis

All three run on CPU workers (AllReduce and AllGather work there; ReduceScatter does not,
which is why GatherLastDim's backward slices instead of reduce-scattering: every rank
computes the same loss on the gathered tensor, so each already holds the full gradient).
"""
from mindspore import nn, ops


class CopyToGroup(nn.Cell):
    """Enter a tensor-parallel region: the input is used by every rank, so its gradient is summed."""

    def __init__(self, group: str):
        super().__init__()
        self.all_reduce = ops.AllReduce(ops.ReduceOp.SUM, group)

    def construct(self, x):
        return ops.identity(x)

    def bprop(self, x, out, dout):
        return (self.all_reduce(dout),)


class ReduceFromGroup(nn.Cell):
    """Leave a tensor-parallel region: sum the ranks' partial results."""

    def __init__(self, group: str):
        super().__init__()
        self.all_reduce = ops.AllReduce(ops.ReduceOp.SUM, group)

    def construct(self, x):
        return self.all_reduce(x)

    def bprop(self, x, out, dout):
        return (dout,)


class GatherLastDim(nn.Cell):
    """[..., n] shards on `size` ranks -> [..., size * n] in rank order, on every rank."""

    def __init__(self, group: str, rank: int, size: int):
        super().__init__()
        self.all_gather = ops.AllGather(group)
        self.rank, self.size = rank, size

    def construct(self, x):
        gathered = self.all_gather(x)  # [size * N, n]: AllGather stacks along axis 0
        return ops.concat(ops.split(gathered, x.shape[0], 0), -1)

    def bprop(self, x, out, dout):
        n = x.shape[-1]
        return (dout[..., self.rank * n:(self.rank + 1) * n],)
