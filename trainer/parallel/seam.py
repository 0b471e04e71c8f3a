"""The one seam between a parallel plan and the model and step: which layout, which reductions.

`parallelize(model, ctx)` is the only place in the trainer that looks at `plan.mode`:

    standalone     nothing to do
    data_parallel  replicas: gradients and loss sums summed over ranks (one AllReduce per update;
                   the target-token count comes from the host, which holds the global batch)
    hybrid         the Megatron-style layout (explicit collectives in the layers, model/parallel)
                   plus the data-parallel reductions over each data-parallel group, and the
                   clipping norm weighted so split parameters count every shard, replicated ones once
    semi_auto      MindSpore auto-parallel: shard() strategies on the unchanged model, the whole
                   batch on every rank (full_batch), the step wrapped in `AutoParallel`; no
                   collective of ours in the graph. Compiles on Ascend/GPU only and has not run
                   on hardware.

data_parallel and hybrid are what `parallel.mode: auto` picks on every backend: the path the
CPU tests run with real processes, and the one that runs unchanged over HCCL on Ascend.
"""
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import mindspore as ms
from mindspore import nn, ops

from model.parallel.layout import apply_hybrid, apply_semi_auto
from model.parallel.mappings import all_gather_works
from trainer.parallel import shared_sum
from trainer.parallel.context import ParallelContext
from trainer.parallel.data import RankRows, shard_rows
from trainer.parallel.flat_split import FlatSplit
from trainer.parallel.plan import FLAT_LIMIT_BYTES

if TYPE_CHECKING:
    from trainer.parallel.zero import FlatShard

_hyper_map = ops.HyperMap()


class DataParallelReduction(nn.Cell):
    """Gradients and loss sums summed over a data-parallel group (identity without one): one AllReduce per
    gradient (MindSpore's DistributedGradReducer)."""

    def __init__(self, weights, group: Optional[str]):
        super().__init__(auto_prefix=False)
        self.reducer = nn.DistributedGradReducer(weights, mean=False, group=group) if group else None
        self.sum = ops.AllReduce(ops.ReduceOp.SUM, group) if group else None

    def construct(self, grads, loss_sum, nll_sum):
        if self.reducer is None:
            return grads, loss_sum, nll_sum
        return self.reducer(grads), self.sum(loss_sum), self.sum(nll_sum)


class FlatReduction(nn.Cell):
    """The same sums with every gradient in one flat buffer: one AllReduce per update instead of one per
    parameter, in `wire` dtype (float16: half the bytes; the sums come back as float32 for the update).
    The loss sums stay float32 (a float16 sum of ~1e4 would keep only units).

    The buffer is cut back by SplitWithSize (trainer/parallel/flat_split.py) and reshaped through HyperMap:
    a hundred-odd static slices, or reshapes in a comprehension, took graph mode about 8 s to compile
    (bench/README.md, bench.startup); this takes under 1 s.
    """

    def __init__(self, weights, group: str, wire=ms.float32,
                 shared: Optional[Tuple[Sequence[int], int, Optional[str]]] = None):
        super().__init__(auto_prefix=False)
        sizes = [int(np.prod(p.shape)) for p in weights]
        self.split = FlatSplit(sizes)
        self.wire = wire
        self.wire_name = "float16" if wire == ms.float16 else "float32"
        self.shared = False
        if shared is not None:  # the group's ranks share this CPU host: sum through memory (shared_sum.py)
            ranks, rank, required_by = shared
            try:
                grads = shared_sum.join("grads", ranks, rank, sum(sizes), np.dtype(self.wire_name), tag=group)
            except shared_sum.SharedMemoryTooSmall as e:  # every member gets it: all fall back together
                if required_by:
                    raise shared_sum.SharedSumError(f"{required_by}: {e}; enlarge /dev/shm (docker run "
                                                    f"--shm-size) or set parallel.grad_reduce=flat") from None
                if rank == ranks[0]:
                    print(f"note: data-parallel sums through MindSpore's AllReduce, not shared memory: {e}",
                          flush=True)
            else:
                self.grad_sum = shared_sum.summing_op("grads", grads)
                self.sum = shared_sum.summing_op("losses", shared_sum.join("losses", ranks, rank, 2, np.float32,
                                                                           tag=group))
                self.shared = True
        if not self.shared:
            self.grad_sum = ops.AllReduce(ops.ReduceOp.SUM, group)
            self.sum = ops.AllReduce(ops.ReduceOp.SUM, group)

    def construct(self, grads, loss_sum, nll_sum):
        flat = ops.concat(_hyper_map(self._flatten, grads))
        total = self.grad_sum(flat).astype(ms.float32)
        out = _hyper_map(self._shaped_like, self.split(total), grads)
        sums = self.sum(ops.stack((loss_sum, nll_sum)))
        return out, sums[0], sums[1]

    def _flatten(self, grad):
        return grad.reshape(-1).astype(self.wire)

    def _shaped_like(self, piece, grad):
        return piece.reshape(grad.shape)


def reduction_path(reduction) -> str:
    """"; data-parallel sums through ..." for the run's first lines ("" without a data-parallel reduction)."""
    if isinstance(reduction, FlatReduction):
        how = "shared memory on this host" if reduction.shared else "one AllReduce"
        return f"; data-parallel gradient sums: one flat {reduction.wire_name} buffer through {how}"
    if isinstance(reduction, DataParallelReduction) and reduction.reducer is not None:
        return "; data-parallel gradient sums: one AllReduce per gradient"
    return ""


@dataclass
class Parallelized:
    """What the seam did to the model, and what the step needs from it."""

    mode: str
    shard_axis: Dict[str, int] = field(default_factory=dict)  # parameters the hybrid layout split
    dp_group: Optional[str] = None  # where gradients and loss sums are summed
    mp_group: Optional[str] = None  # where the clipping norm's partial sums are summed
    mp_size: int = 1
    full_batch: bool = False  # every rank takes the whole batch (semi_auto); else its share of rows
    strategies: Tuple = ()  # semi_auto: (operator path, operator, strategy) rows set on the model
    wrap: Callable[[nn.Cell], nn.Cell] = lambda step: step  # semi_auto: AutoParallel around the step
    ctx: Optional[ParallelContext] = None  # for this rank's share of a batch's rows

    @property
    def splits_projection(self) -> bool:
        """Whether the output projection is split over ranks (then no fused CPU loss)."""
        return self.mode == "semi_auto" or bool(self.shard_axis)

    def wire_dtype(self):
        """The dtype gradients are summed in on the wire (parallel.grad_reduce_dtype)."""
        plan = self.ctx.plan if self.ctx is not None else None
        return ms.float16 if plan is not None and plan.grad_reduce_dtype == "float16" else ms.float32

    def reduction(self, weights) -> nn.Cell:
        """The gradient and loss-sum reduction the update step applies first (parallel.grad_reduce and
        grad_reduce_dtype choose the flat one)."""
        plan = self.ctx.plan if self.ctx is not None else None
        if self.dp_group is None or plan is None:
            return DataParallelReduction(weights, self.dp_group)
        shared = self.shared_memory_group()
        if shared is not None or plan.grad_reduce_dtype == "float16":  # float16 always goes through the flat buffer
            return FlatReduction(weights, self.dp_group, self.wire_dtype(), shared)
        flat_bytes = sum(4 * int(np.prod(p.shape)) for p in weights)
        if plan.grad_reduce == "flat" or (plan.grad_reduce == "auto" and flat_bytes <= FLAT_LIMIT_BYTES):
            return FlatReduction(weights, self.dp_group, ms.float32)
        return DataParallelReduction(weights, self.dp_group)

    def shared_memory_group(self) -> Optional[Tuple[Tuple[int, ...], int, Optional[str]]]:
        """(the data-parallel group's ranks, this rank, what requires it: None where `auto` may fall back to
        AllReduce) when its sums go through shared memory, else None:
        parallel.grad_reduce=shared_memory, or auto on the CPU with every rank on this host under
        `mindrun launch`. shared_memory where that does not hold is an error."""
        plan, ctx = self.ctx.plan, self.ctx
        if plan.grad_reduce not in ("auto", "shared_memory"):
            return None
        mp = plan.model_parallel
        why_not = shared_sum.unavailable(ctx.backend, plan.world_size)
        if why_not is None:
            required_by = ("parallel.grad_reduce=shared_memory" if plan.grad_reduce == "shared_memory" else
                           "a job without MindSpore's cluster (one CPU host, store mode) sums through shared memory"
                           if ctx.local is not None else None)
            return tuple(ctx.mp_rank + i * mp for i in range(plan.data_parallel)), ctx.rank, required_by
        if plan.grad_reduce == "shared_memory":
            raise shared_sum.SharedSumError(f"parallel.grad_reduce=shared_memory: {why_not}; use auto, flat or "
                                            f"per_tensor")
        return None

    def optimizer_shard(self, weights) -> Optional["FlatShard"]:
        """Where Adam's state is split (parallel.optimizer_shard under data_parallel or hybrid), or None."""
        from trainer.parallel.zero import FlatShard

        plan = self.ctx.plan if self.ctx is not None else None
        if plan is None or not plan.optimizer_shard or self.dp_group is None or self.mode == "semi_auto":
            return None
        return FlatShard.of(weights, self.ctx.dp_rank, plan.data_parallel, self.dp_group, self.ctx.backend,
                            self.ctx.mp_rank if self.shard_axis else 0, self.mp_size if self.shard_axis else 1)

    def norm_weights(self, weights) -> Tuple[float, ...]:
        """Per-parameter weight in the squared clipping norm: split ones every shard, replicated ones once."""
        return tuple(1.0 if p.name in self.shard_axis else 1.0 / self.mp_size for p in weights)

    def mp_sum(self) -> Optional[nn.Cell]:
        """AllReduce of the norm's partial sums over the model-parallel group, or None."""
        return ops.AllReduce(ops.ReduceOp.SUM, self.mp_group) if self.mp_group and self.shard_axis else None

    def local_rows(self, arrays: Sequence[np.ndarray]) -> Tuple[np.ndarray, ...]:
        """This rank's part of a collated global batch (a RankRows batch is that already)."""
        if isinstance(arrays, RankRows) or self.full_batch or self.ctx is None:
            return tuple(arrays)
        return shard_rows(arrays, self.ctx)

    def row_share(self) -> Tuple[int, int]:
        """(shares, this rank's share) of a global batch's rows that this rank feeds its step: (1, 0) when every
        rank takes the whole batch (standalone, semi_auto)."""
        if self.full_batch or self.ctx is None or self.dp_group is None:
            return 1, 0
        return self.ctx.plan.data_parallel, self.ctx.dp_rank


def _auto_parallel(optimizer_shard: bool) -> Callable[[nn.Cell], nn.Cell]:
    def wrap(step: nn.Cell) -> nn.Cell:
        from mindspore.parallel.auto_parallel import AutoParallel  # MindSpore 2.10's API (Ascend/GPU)

        wrapped = AutoParallel(step, parallel_mode="semi_auto")
        wrapped.dataset_strategy("full_batch")  # every rank feeds the global batch; strategies split it
        if optimizer_shard:
            wrapped.hsdp()  # Adam state sharded over the data-parallel ranks
        return wrapped
    return wrap


def parallelize(model: nn.Cell, ctx: ParallelContext) -> Parallelized:
    """Apply `ctx.plan`'s layout to `model` in place; return what the step needs (see the module docstring)."""
    plan = ctx.plan
    if plan.mode == "standalone" or plan.world_size == 1:
        return Parallelized(plan.mode)
    if plan.mode == "semi_auto":
        rows = apply_semi_auto(model, plan.data_parallel, plan.model_parallel)
        return Parallelized("semi_auto", full_batch=True, strategies=tuple(rows),
                            wrap=_auto_parallel(plan.optimizer_shard))
    if ctx.local is None:  # without MindSpore's cluster nothing of MindSpore's communicates: stand_alone
        _set_explicit_mode(plan.mode, plan.world_size)
    applied = {}
    if plan.mode == "hybrid":
        applied = apply_hybrid(model, ctx.mp_group, ctx.mp_rank, plan.model_parallel,
                               all_gather=all_gather_works(ctx.mp_group, ctx.backend)).shard_axis
    return Parallelized(plan.mode, shard_axis=applied, dp_group=ctx.dp_group, mp_group=ctx.mp_group,
                        mp_size=plan.model_parallel, ctx=ctx)


def _set_explicit_mode(mode: str, world_size: int) -> None:
    """MindSpore's parallel mode for layouts whose collectives are our own (data_parallel, hybrid)."""
    import mindspore as ms

    ms.set_auto_parallel_context(parallel_mode={"data_parallel": "data_parallel", "hybrid": "hybrid_parallel"}[mode],
                                 gradients_mean=False, device_num=world_size)
