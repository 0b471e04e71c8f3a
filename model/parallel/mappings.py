"""Collectives as conjugate pairs (Megatron-Core's mappings), each a Cell with its own bprop.

    CopyToGroup      forward: identity              backward: all-reduce (sum) over the group
    ReduceFromGroup  forward: all-reduce (sum)      backward: identity
    GatherLastDim    forward: all-gather, concat    backward: keep this rank's slice
                              on the last axis

All three run on CPU workers. ReduceScatter does not work there, which is why GatherLastDim's
backward slices instead of reduce-scattering: every rank computes the same loss on the gathered
tensor, so each already holds the full gradient. AllGather works on CPU only over the world
group, so on a CPU sub-group (data_parallel x model_parallel jobs) a gather is an all-reduce of
zero-padded slices: `size` times the traffic, the same result.
"""
from mindspore import nn, ops
from mindspore.communication import GlobalComm


def all_gather_works(group: str, backend: str) -> bool:
    """Whether AllGather can run over `group` on `backend` ("CPU", "GPU", "Ascend"; see the module docstring)."""
    return group == GlobalComm.WORLD_COMM_GROUP or backend != "CPU"


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

    def __init__(self, group: str, rank: int, size: int, all_gather: bool):
        """`all_gather`: whether AllGather works over `group` here (`all_gather_works`); else zero-padded AllReduce."""
        super().__init__()
        self.use_all_gather = all_gather
        if self.use_all_gather:
            self.all_gather = ops.AllGather(group)
        else:
            self.all_reduce = ops.AllReduce(ops.ReduceOp.SUM, group)
        self.rank, self.size = rank, size

    def construct(self, x):
        if self.use_all_gather:
            gathered = self.all_gather(x)  # [size * N, n]: AllGather stacks along axis 0
            return ops.concat(ops.split(gathered, x.shape[0], 0), -1)
        n = x.shape[-1]
        before = ops.zeros(x.shape[:-1] + (self.rank * n,), x.dtype)
        after = ops.zeros(x.shape[:-1] + ((self.size - 1 - self.rank) * n,), x.dtype)
        return self.all_reduce(ops.concat((before, x, after), -1))

    def bprop(self, x, out, dout):
        n = x.shape[-1]
        return (dout[..., self.rank * n:(self.rank + 1) * n],)
