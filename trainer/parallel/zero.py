"""Optimizer-state sharding on the explicit-collective path (`parallel.optimizer_shard`: ZeRO stage 1, Megatron's
distributed optimizer) for data_parallel and hybrid layouts.

This rank's gradients (its model-parallel shard's, under hybrid) are laid end to end in one flat float32 vector,
padded to a multiple of the data-parallel size dp and cut into dp contiguous pieces; data-parallel rank r owns
piece r. Per update:

    reduce     the flat gradient summed over the data-parallel group, this rank keeping only its piece
               (Ascend: ReduceScatter; the CPU, where ReduceScatter does not run: AllReduce, then the piece)
    norm       the piece's weighted sum of squares, summed over the data-parallel group (and the model-parallel
               group, as unsharded): one norm of the whole gradient, the same on every rank, so clipping and the
               non-finite check agree everywhere
    update     Adam (MindSpore's `Adam` primitive, the kernel nn.Adam runs) on the piece of the weights with
               the piece's moments: each rank holds 1/dp of the moments (+ a 1/dp float32 copy of its weights)
    gather     the updated pieces made whole on every rank and written back into the weights (Ascend: AllGather;
               the CPU, where AllGather runs on the world group only: each piece in its slot of a zero vector,
               AllReduce)

Checkpoints: every rank writes its pieces of the moments to a piece file of its own (no gather: at 7B the whole
moments of a model-parallel rank would be tens of GB on each host), and the manifest describes `moment1.<weight>`
/ `moment2.<weight>` (split like the weight under hybrid) as ranges of those pieces (trainer/ckpt/layout.py
flat_parts). A load reads by those names the moments of the weights this rank's piece overlaps (about 1/dp of
them) and cuts them into its piece: a checkpoint resumes into any dp or mp size, sharded or not, and vice versa.
The ReduceScatter / AllGather branch (Ascend) has not run; the CPU branch is what the tests run.
"""
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import mindspore as ms
from mindspore import nn, ops
from mindspore.ops import operations as P

from trainer.parallel.flat_split import FlatSplit


@dataclass(frozen=True)
class FlatShard:
    """Where each weight sits in the flat vector, and which piece of it data-parallel rank `dp_rank` owns."""

    shapes: tuple
    sizes: tuple
    offsets: tuple
    padded: int  # the flat length, a multiple of dp_size
    dp_rank: int
    dp_size: int
    group: str  # the data-parallel group
    native: bool  # ReduceScatter + AllGather (Ascend); else AllReduce + slice (the CPU)
    mp_rank: int = 0
    mp_size: int = 1

    @classmethod
    def of(cls, weights: Sequence, dp_rank: int, dp_size: int, group: str, backend: str, mp_rank: int = 0,
           mp_size: int = 1) -> "FlatShard":
        sizes = tuple(int(np.prod(p.shape)) for p in weights)
        total = sum(sizes)
        padded = -(-total // dp_size) * dp_size
        offsets = tuple(int(x) for x in np.cumsum((0,) + sizes[:-1]))
        return cls(tuple(tuple(p.shape) for p in weights), sizes, offsets, padded, dp_rank, dp_size, group,
                   backend.lower() != "cpu", mp_rank, mp_size)

    @property
    def spare(self) -> int:
        """Zeros after the last weight that make the flat length a multiple of dp_size."""
        return self.padded - sum(self.sizes)

    @property
    def piece(self) -> int:
        return self.padded // self.dp_size

    @property
    def lo(self) -> int:
        return self.dp_rank * self.piece

    @property
    def hi(self) -> int:
        return self.lo + self.piece

    def per_element(self, values: Sequence[float]) -> np.ndarray:
        """This rank's piece of a vector that is values[i] over weight i's elements (0 in the padding)."""
        full = np.zeros(self.padded, np.float32)
        for value, offset, size in zip(values, self.offsets, self.sizes):
            full[offset:offset + size] = value
        return full[self.lo:self.hi]

    def overlap(self, index: int) -> Optional[Tuple[int, int, int]]:
        """(first, end, at): elements [first, end) of weight `index`, flattened, lie in this rank's piece from
        position `at`; None when the piece holds none of them."""
        first, end = max(self.offsets[index], self.lo), min(self.offsets[index] + self.sizes[index], self.hi)
        if first >= end:
            return None
        return first - self.offsets[index], end - self.offsets[index], first - self.lo

    def flatten(self, arrays: Dict[int, np.ndarray]) -> np.ndarray:
        """Host arrays of the weights' shapes (by index; only those the piece overlaps are needed) -> this rank's
        piece of their flat vector."""
        piece = np.zeros(self.piece, np.float32)
        for index in range(len(self.sizes)):
            span = self.overlap(index)
            if span is not None:
                first, end, at = span
                piece[at:at + end - first] = np.asarray(arrays[index], np.float32).reshape(-1)[first:end]
        return piece


_hyper_map = ops.HyperMap()


@dataclass(frozen=True)
class SkippedMoment:
    """A moment of a weight this rank's piece does not overlap: in a load's state for the checkpoint's shape
    check (trainer/ckpt/store.py), never read."""

    name: str
    shape: tuple
    dtype: object = ms.float32
    wanted: bool = False


def _flatten_as(dtype, tensor):
    return tensor.reshape(-1).astype(dtype)


def _assign_shaped(weight, piece):
    return ops.assign(weight, piece.reshape(weight.shape).astype(weight.dtype))


def _flat(tensors, shard: FlatShard, dtype=ms.float32):
    """The tensors (weights or gradients, in the shard's order) as one flat vector of shard.padded elements.
    HyperMap, not a comprehension: graph mode compiles a hundred-odd reshapes in a comprehension in seconds."""
    parts = _hyper_map(ops.partial(_flatten_as, dtype), tensors)
    if shard.spare:
        parts = parts + (ops.zeros((shard.spare,), dtype),)
    return ops.concat(parts)


class ShardedReduction(nn.Cell):
    """(grads, loss_sum, nll_sum) -> ((this rank's piece of the summed flat gradient,), loss_sum, nll_sum),
    the sums over the data-parallel group. `wire` float16 halves the bytes (summed in float16, as FlatReduction)."""

    def __init__(self, shard: FlatShard, wire=ms.float32):
        super().__init__(auto_prefix=False)
        self.shard, self.wire = shard, wire
        if shard.native:
            self.scatter = ops.ReduceScatter(ops.ReduceOp.SUM, shard.group)
        else:
            self.grad_sum = ops.AllReduce(ops.ReduceOp.SUM, shard.group)
        self.sum = ops.AllReduce(ops.ReduceOp.SUM, shard.group)

    def construct(self, grads, loss_sum, nll_sum):
        flat = _flat(grads, self.shard, self.wire)
        if self.shard.native:
            piece = self.scatter(flat).astype(ms.float32)
        else:
            piece = self.grad_sum(flat)[self.shard.lo:self.shard.hi].astype(ms.float32)
        sums = self.sum(ops.stack((loss_sum, nll_sum)))
        return (piece,), sums[0], sums[1]


class ShardedGradNorm(nn.Cell):
    """The norm of the whole gradient from the pieces: weighted sums of squares, summed over the data-parallel
    group, then (hybrid) the model-parallel group."""

    def __init__(self, shard: FlatShard, weights: Sequence[float], mp_sum: Optional[nn.Cell] = None):
        super().__init__()
        uniform = len(set(weights)) <= 1 and (not weights or weights[0] == 1.0)
        self.weights = None if uniform else ms.Tensor(shard.per_element(weights))
        self.dp_sum = ops.AllReduce(ops.ReduceOp.SUM, shard.group)
        self.mp_sum = mp_sum

    def construct(self, grads):
        squares = ops.square(grads[0])
        if self.weights is not None:
            squares = squares * self.weights
        total = self.dp_sum(squares.sum())
        if self.mp_sum is not None:
            total = self.mp_sum(total)
        return ops.sqrt(total)


class ShardedAdam(nn.Optimizer):
    """Adam over this rank's piece of the flat weights; the weights made whole again after every update.

    Called with the 1-tuple ShardedReduction returns. State (besides the weights): `zero.moment1`,
    `zero.moment2` and `zero.weights` (the piece, float32), `beta1_power`, `beta2_power`, `global_step`,
    `learning_rate` (names of nn.Adam where they mean the same)."""

    def __init__(self, weights, shard: FlatShard, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(ms.Tensor(0.0, ms.float32), weights)
        self.shard = shard
        zeros = np.zeros(shard.piece, np.float32)
        self.piece = ms.Parameter(ms.Tensor(zeros), name="zero.weights", requires_grad=False)
        self.moment1 = ms.Parameter(ms.Tensor(zeros), name="zero.moment1", requires_grad=False)
        self.moment2 = ms.Parameter(ms.Tensor(zeros), name="zero.moment2", requires_grad=False)
        self.beta1_power = ms.Parameter(ms.Tensor(1.0, ms.float32), name="beta1_power", requires_grad=False)
        self.beta2_power = ms.Parameter(ms.Tensor(1.0, ms.float32), name="beta2_power", requires_grad=False)
        self.beta1 = ms.Tensor(beta1, ms.float32)
        self.beta2 = ms.Tensor(beta2, ms.float32)
        self.eps = ms.Tensor(eps, ms.float32)
        # nn.Adam's L2 decay (gradient + wd * weight), on what its default filter decays: not LayerNorm's
        # gamma and beta
        decays = [weight_decay if ("beta" not in p.name and "gamma" not in p.name) else 0.0 for p in weights]
        self.decay = ms.Tensor(shard.per_element(decays)) if weight_decay > 0 else None
        self.adam = P.Adam()
        self.cut = FlatSplit(tuple(shard.sizes) + ((shard.spare,) if shard.spare else ()))
        if shard.native:
            self.gather = ops.AllGather(shard.group)
        else:
            self.gather_sum = ops.AllReduce(ops.ReduceOp.SUM, shard.group)
            slot = np.zeros((shard.dp_size, 1), np.float32)
            slot[shard.dp_rank] = 1.0
            self.slot = ms.Tensor(slot)

    def construct(self, gradients):
        grad = gradients[0]
        weights = self._parameters
        piece = _flat(weights, self.shard)[self.shard.lo:self.shard.hi]
        done = ops.assign(self.piece, piece)  # the weights as they are now (a load may have changed them)
        if self.decay is not None:
            grad = grad + self.decay * piece
        lr = self.get_lr()
        self.assignadd(self.global_step, self.global_step_increase_tensor)
        beta1_power = self.beta1_power * self.beta1
        self.beta1_power = beta1_power
        beta2_power = self.beta2_power * self.beta2
        self.beta2_power = beta2_power
        grad = ops.depend(grad, done)
        done = self.adam(self.piece, self.moment1, self.moment2, beta1_power, beta2_power, lr, self.beta1,
                         self.beta2, self.eps, grad)
        updated = ops.depend(self.piece, done)
        if self.shard.native:
            full = self.gather(updated)
        else:
            full = self.gather_sum((self.slot * updated.reshape(1, -1)).reshape(-1))
        pieces = self.cut(full)  # not a static slice per weight (compile time)
        return _hyper_map(_assign_shaped, weights, pieces[:len(self.shard.sizes)])

    # -- checkpoints (trainer/ckpt/store.py) -----------------------------------------------------------------
    def _counters_and_weights(self) -> List[ms.Parameter]:
        return [self.global_step, self.learning_rate, *self._parameters, self.beta1_power, self.beta2_power]

    def save_state(self) -> Tuple[List[ms.Parameter], Dict[str, ms.Parameter]]:
        """What a save writes: the counters and weights under nn.Adam's names, and this rank's pieces of the
        moments (`zero.moment1`, `zero.moment2`), each rank to its own piece file: nothing is gathered."""
        return self._counters_and_weights(), {"zero.moment1": self.moment1, "zero.moment2": self.moment2}

    def flat_description(self) -> Dict:
        """Where each weight's moments sit in the flat vector (the same on every model-parallel rank: equal
        local shapes), for the manifest's `moment1.<weight>` entries."""
        shard = self.shard
        return {"names": [w.name for w in self._parameters], "shapes": [list(s) for s in shard.shapes],
                "offsets": list(shard.offsets), "sizes": list(shard.sizes), "piece": shard.piece}

    def load_state(self) -> List:
        """The state as nn.Adam names it, for a load to fill whatever layout saved it: the counters and weights,
        the moments of the weights this rank's piece overlaps (zeros, this rank's shape), and for the others a
        `SkippedMoment` (checked against the checkpoint's shapes, not read: a rank reads about 1/dp of the
        moments). `load_checkpoint_state` then cuts the moments into this rank's pieces."""
        state = self._counters_and_weights()
        for name in ("moment1", "moment2"):
            for index, weight in enumerate(self._parameters):
                full = f"{name}.{weight.name}"
                if self.shard.overlap(index) is None:
                    state.append(SkippedMoment(full, tuple(weight.shape)))
                else:
                    state.append(ms.Parameter(ms.Tensor(np.zeros(weight.shape, np.float32)), name=full,
                                              requires_grad=False))
        return state

    def load_checkpoint_state(self, state: List) -> None:
        """Cut the moments of `state` (as load_state gave, then loaded) into this rank's pieces."""
        by_name = {p.name: p for p in state}
        for name, piece in (("moment1", self.moment1), ("moment2", self.moment2)):
            arrays = {i: by_name[f"{name}.{w.name}"].asnumpy() for i, w in enumerate(self._parameters)
                      if self.shard.overlap(i) is not None}
            piece.set_data(ms.Tensor(self.shard.flatten(arrays)))

    def state_elements(self) -> int:
        """Elements of Adam state this rank holds (both moments)."""
        return int(self.moment1.size + self.moment2.size)
