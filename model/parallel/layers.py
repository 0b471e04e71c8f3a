"""Megatron-style tensor-parallel layers, built from an existing layer by slicing its weights.

A layer keeps the full layer's parameter names, so shards gather back by name. `shard_axis`
says which axis of each parameter is split (0: rows, 1: columns); others are replicated.
"""
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops

from model.parallel.mappings import CopyToGroup, GatherLastDim, ReduceFromGroup


def _slice(param: Parameter, axis: int, rank: int, size: int) -> Parameter:
    full = param.asnumpy()
    n = full.shape[axis] // size
    part = full[rank * n:(rank + 1) * n] if axis == 0 else full[:, rank * n:(rank + 1) * n]
    return Parameter(Tensor(part.copy(), param.dtype), name=param.name, requires_grad=param.requires_grad)


def _names(dense: nn.Dense) -> dict:
    return {"weight": dense.weight.name, **({"bias": dense.bias.name} if dense.has_bias else {})}


class ColumnParallelDense(nn.Cell):
    """y = x W_r^T + b_r with this rank's rows of W (a slice of the output features)."""

    def __init__(self, dense: nn.Dense, group: str, rank: int, size: int):
        super().__init__()
        self.weight = _slice(dense.weight, 0, rank, size)  # [out / size, in]
        self.has_bias = dense.has_bias
        if self.has_bias:
            self.bias = _slice(dense.bias, 0, rank, size)
        self.shard_axis = {self.weight.name: 0, **({dense.bias.name: 0} if dense.has_bias else {})}
        self.full_names = _names(dense)
        self.copy = CopyToGroup(group)
        self.matmul = ops.MatMul(transpose_b=True)

    def construct(self, x):
        shape = x.shape
        y = self.matmul(self.copy(x).reshape(-1, shape[-1]), self.weight)
        if self.has_bias:
            y = y + self.bias
        return y.reshape(shape[:-1] + (y.shape[-1],))


class RowParallelDense(nn.Cell):
    """y = sum over ranks of x_r W_r^T, plus b: this rank's columns of W (a slice of the inputs)."""

    def __init__(self, dense: nn.Dense, group: str, rank: int, size: int):
        super().__init__()
        self.weight = _slice(dense.weight, 1, rank, size)  # [out, in / size]
        self.has_bias = dense.has_bias
        if self.has_bias:
            self.bias = dense.bias  # replicated: added once, after the reduction
        self.shard_axis = {self.weight.name: 1}
        self.full_names = _names(dense)
        self.reduce = ReduceFromGroup(group)
        self.matmul = ops.MatMul(transpose_b=True)

    def construct(self, x):
        shape = x.shape
        y = self.reduce(self.matmul(x.reshape(-1, shape[-1]), self.weight))
        if self.has_bias:
            y = y + self.bias
        return y.reshape(shape[:-1] + (y.shape[-1],))


class VocabParallelEmbedding(nn.Cell):
    """Embedding whose table rows (the vocabulary) are split; ids of other ranks look up zeros."""

    def __init__(self, embedding: nn.Embedding, group: str, rank: int, size: int):
        super().__init__()
        self.embedding_table = _slice(embedding.embedding_table, 0, rank, size)  # [V / size, d]
        self.per_rank = self.embedding_table.shape[0]
        self.start = rank * self.per_rank
        self.shard_axis = {self.embedding_table.name: 0}
        self.full_names = {"embedding_table": embedding.embedding_table.name}
        self.reduce = ReduceFromGroup(group)

    def construct(self, ids):
        local = ids - self.start
        mine = ops.logical_and(local >= 0, local < self.per_rank)
        local = ops.select(mine, local, ops.zeros_like(local))
        out = ops.gather(self.embedding_table, local, 0) * mine.astype(ms.float32).expand_dims(-1)
        return self.reduce(out)


class VocabRows(nn.Cell):
    """This rank's vocabulary rows of an untied output projection's weight [V / size, d].

    Holds the weight only: the model's `logits` Cell (VocabParallelLogits below) applies it.
    """

    def __init__(self, dense: nn.Dense, group: str, rank: int, size: int):
        super().__init__()
        self.weight = _slice(dense.weight, 0, rank, size)
        self.shard_axis = {self.weight.name: 0}
        self.full_names = {"weight": dense.weight.name}


class VocabParallelLogits(nn.Cell):
    """x [N, d] times this rank's vocabulary rows of the output weight, gathered to [N, V] on every rank.

    The input is used by every rank's slice of the vocabulary, so it enters the group once
    (its gradient is summed); the logits leave it by an all-gather over the last axis.
    """

    def __init__(self, group: str, rank: int, size: int, all_gather: bool):
        super().__init__()
        self.copy = CopyToGroup(group)
        self.matmul = ops.MatMul(transpose_b=True)
        self.gather = GatherLastDim(group, rank, size, all_gather)

    def construct(self, x, weight):
        return self.gather(self.matmul(self.copy(x), weight))
