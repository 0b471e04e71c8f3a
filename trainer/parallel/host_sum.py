"""Sums over ranks from host code: the run clock, validation's loss sums and hypothesis tables, the checkpoint
agreements (commit, resume, the storage probe).

Two ways, chosen by the parallel context:
  - a one-host CPU job that runs without MindSpore's cluster (ctx.local, trainer/parallel/context.py): through
    the job's local socket group (trainer/parallel/local_group.py), in NumPy;
  - otherwise MindSpore's AllReduce. Over the world group it runs host-side (MindSpore supports world-group
    communication in PyNative). Validation's data-parallel group under dp x mp is a sub-group, and MindSpore
    documents PyNative communication over a sub-group as unsupported unless the job was started by mpirun (the
    CPU runs it anyway, which is why the tests could not see it): `GroupSum` is a Cell, so in graph mode, the
    trainer's, calling it compiles the AllReduce into a graph of its own (once per input shape, so once or twice
    a run), as the train step's collectives are.
"""
from typing import Callable

import numpy as np
from mindspore import nn, ops

Sum = Callable[[np.ndarray], np.ndarray]


class GroupSum(nn.Cell):
    """Element-wise sum of a tensor over the ranks of `group` (every rank of it calls this together)."""

    def __init__(self, group: str):
        super().__init__()
        self.all_reduce = ops.AllReduce(ops.ReduceOp.SUM, group)

    def construct(self, x):
        return self.all_reduce(x)


def world_allreduce(array: np.ndarray) -> np.ndarray:
    """Element-wise float32 sum over every rank of MindSpore's cluster (an AllReduce over the world group)."""
    import mindspore as ms

    return ops.AllReduce(ops.ReduceOp.SUM)(ms.Tensor(array.astype(np.float32))).asnumpy()


def world_sum(ctx) -> Sum:
    """Element-wise sum over every rank of the job, NumPy in and out (every rank calls it together)."""
    return ctx.local.sum if ctx.local is not None else world_allreduce


def group_sum(ctx, group: str) -> Sum:
    """Element-wise sum over the ranks of `group`, a data-parallel group of `ctx`, NumPy in and out."""
    if ctx.local is not None:  # a job without MindSpore's cluster has model_parallel 1: its dp group is the world
        return ctx.local.sum
    cell = GroupSum(group)

    def summed(array: np.ndarray) -> np.ndarray:
        import mindspore as ms

        return cell(ms.Tensor(array)).asnumpy()
    return summed
