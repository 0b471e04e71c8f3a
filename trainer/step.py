"""The training step in two Cells: gradients of a batch, then the update.

    GradStep    forward, loss, backward on this rank's rows -> loss sums, gradients (scaled)
    GradAccumulator, MicroStep   gradient accumulation: micro-batches summed locally
    UpdateStep  reduce across data-parallel ranks, unscale, finite check, clip, optimizer update
    TrainStep   the last micro-batch and the update, compiled as one graph
    Stepper     the host side: denominators, the micro-batches of an update, the loss scale

The loss is normalised per target token of the whole update (all micro-batches of all ranks)
before differentiating, so the learning rate does not depend on how many tokens a batch
holds, k micro-batches give the update of one k-times-larger batch, and summing the ranks'
gradients (trainer/parallel/seam.py's reduction) gives exactly the standalone update.
"""
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np

import mindspore as ms
from mindspore import nn, ops

from model.dropout import step_key
from trainer.parallel.data import RankRows

_hyper_map = ops.HyperMap()


def _scale_grad(scale, grad):
    return grad * scale


def _sum_of_squares(x):
    # the last axis first: MindSpore's CPU ReduceSum over all axes of an [8000, 256] tensor
    # takes ~7 ms, a row-wise sum and then a sum of the rows ~0.5 ms (bench/HISTORY.md)
    squares = ops.square(x)
    return squares.sum(-1).sum() if x.ndim > 1 else squares.sum()


class TeacherForcedLoss(nn.Cell):
    """The model's logits, then the criterion: (src, tgt_in, tgt_out, packed...) -> (loss_sum, nll_sum, n_tokens)."""

    def __init__(self, model: nn.Cell, criterion: nn.Cell):
        super().__init__(auto_prefix=False)
        self.model, self.criterion = model, criterion

    def construct(self, src, tgt_in, tgt_out, src_seg=None, tgt_seg=None, src_pos=None, tgt_pos=None):
        return self.criterion(self.model(src, tgt_in, src_seg, tgt_seg, src_pos, tgt_pos), tgt_out)


class GradStep(nn.Cell):
    """Gradients of one (micro-)batch: (loss_sum, nll_sum, grads) of this rank's rows.

    The loss differentiated is loss_sum / denominator * scale: `denominator` is the target
    token count of the whole update (every micro-batch of every data-parallel rank, counted
    on the host from the global batches), `scale` the loss scale (1 without scaling). Both are
    tensor inputs, so their values change without a recompile. `key` is the call's dropout
    key (model/dropout.py), assigned to the model's `dropout_key` before the forward.
    """

    def __init__(self, loss_fn: nn.Cell, weights, dropout_key: Optional[ms.Parameter] = None):
        super().__init__(auto_prefix=False)
        self.loss_fn = loss_fn
        self.dropout_key = dropout_key
        self.grad_fn = ops.value_and_grad(self.forward, None, weights, has_aux=True)

    def forward(self, denominator, scale, src, tgt_in, tgt_out, src_seg=None, tgt_seg=None, src_pos=None,
                tgt_pos=None):
        """Scaled loss of this rank's rows per target token of the update, with the sums as auxiliaries."""
        loss_sum, nll_sum, _ = self.loss_fn(src, tgt_in, tgt_out, src_seg, tgt_seg, src_pos, tgt_pos)
        return loss_sum / denominator * scale, loss_sum, nll_sum

    def construct(self, denominator, scale, key, src, tgt_in, tgt_out, src_seg=None, tgt_seg=None, src_pos=None,
                  tgt_pos=None):
        if self.dropout_key is not None:
            ops.assign(self.dropout_key, key)
        (_, loss_sum, nll_sum), grads = self.grad_fn(denominator, scale, src, tgt_in, tgt_out,
                                                     src_seg, tgt_seg, src_pos, tgt_pos)
        return loss_sum, nll_sum, grads


class GradAccumulator(nn.Cell):
    """Float32 sums of the micro-batches' gradients and loss sums until the update takes them.

    Local to the rank: nothing is communicated until the update step reduces the total once.
    """

    def __init__(self, weights):
        super().__init__(auto_prefix=False)
        self.grads = ms.ParameterTuple(
            ms.Parameter(ops.zeros(p.shape, ms.float32), name=f"accumulated.{p.name}", requires_grad=False)
            for p in weights)
        self.loss_sum = ms.Parameter(ms.Tensor(0.0, ms.float32), name="accumulated.loss_sum", requires_grad=False)
        self.nll_sum = ms.Parameter(ms.Tensor(0.0, ms.float32), name="accumulated.nll_sum", requires_grad=False)

    def add(self, loss_sum, nll_sum, grads):
        """Add one micro-batch's sums; returns the updated loss sum (a dependency for the caller)."""
        _hyper_map(ops.assign_add, self.grads, grads)
        ops.assign_add(self.nll_sum, nll_sum)
        return ops.assign_add(self.loss_sum, loss_sum)

    def take(self, loss_sum, nll_sum, grads):
        """The sums with this last micro-batch added, the store zeroed for the next update."""
        grads = _hyper_map(ops.add, grads, self.grads)
        loss_sum = loss_sum + self.loss_sum
        nll_sum = nll_sum + self.nll_sum
        _hyper_map(_zero, self.grads)
        ops.assign(self.loss_sum, ops.zeros_like(self.loss_sum))
        ops.assign(self.nll_sum, ops.zeros_like(self.nll_sum))
        return loss_sum, nll_sum, grads


def _zero(parameter):
    return ops.assign(parameter, ops.zeros_like(parameter))


class MicroStep(nn.Cell):
    """A micro-batch that is not the update's last: gradients into the accumulator, no communication."""

    def __init__(self, grad_step: GradStep, accumulator: GradAccumulator):
        super().__init__(auto_prefix=False)
        self.grad_step = grad_step
        self.accumulator = accumulator

    def construct(self, denominator, scale, key, src, tgt_in, tgt_out, src_seg=None, tgt_seg=None, src_pos=None,
                  tgt_pos=None):
        loss_sum, nll_sum, grads = self.grad_step(denominator, scale, key, src, tgt_in, tgt_out,
                                                  src_seg, tgt_seg, src_pos, tgt_pos)
        return self.accumulator.add(loss_sum, nll_sum, grads)


class GradNorm(nn.Cell):
    """The global L2 norm of the gradients, each parameter weighted as the parallel seam says.

    `weights[i]` counts parameter i's squares (1 for split parameters, 1/mp for replicated
    ones, which every model-parallel rank holds); `mp_sum` sums over the model-parallel group.
    `sum_of_squares` (a C++ kernel on the CPU) replaces the per-gradient sums when given.
    """

    def __init__(self, weights: Sequence[float], mp_sum: Optional[nn.Cell] = None,
                 sum_of_squares: Optional[nn.Cell] = None):
        super().__init__()
        self.weights = tuple(weights)
        self.mp_sum = mp_sum
        self.sum_of_squares = sum_of_squares

    def construct(self, grads):
        if self.sum_of_squares is not None:
            total = self.sum_of_squares(grads)
        else:
            total = ops.addn([_sum_of_squares(g.astype(ms.float32)) * w for g, w in zip(grads, self.weights)])
        if self.mp_sum is not None:
            total = self.mp_sum(total)
        return ops.sqrt(total)


class UpdateStep(nn.Cell):
    """Reduce (the seam's `reduction`: gradients and loss sums over data-parallel ranks), unscale,
    check, clip, apply. Returns (loss_sum, nll_sum, grad_norm, finite) of the update.

    The norm is taken after the reduction (and summed over the model-parallel group by
    GradNorm), so a non-finite gradient on any rank makes it non-finite on every rank: all
    ranks skip together, and none ever steps alone. A skipped update leaves the parameters
    and the optimizer state untouched. Unscaling and clipping are one multiplication.

    The learning rate comes in as an input and is assigned to the optimizer's Parameter inside
    the graph: MindSpore 2.10 does not show a host `set_data` made after compilation to the
    optimizer inside the `if` branch (it kept the first value in every graph compiled before;
    tests/test_precision.py checks the rate reaches every compiled shape).
    """

    def __init__(self, optimizer: nn.Optimizer, clip_norm: float, reduction: nn.Cell, norm: GradNorm):
        super().__init__(auto_prefix=False)
        self.optimizer = optimizer
        self.clip_norm = clip_norm
        self.reduction = reduction
        self.norm = norm

    def construct(self, loss_sum, nll_sum, grads, scale, lr):
        ops.assign(self.optimizer.learning_rate, lr)
        grads, loss_sum, nll_sum = self.reduction(grads, loss_sum, nll_sum)
        norm = self.norm(grads) / scale
        finite = ops.isfinite(norm)
        factor = 1.0 / scale
        if self.clip_norm > 0:
            factor = ops.minimum(self.clip_norm / (norm + 1e-6), 1.0) / scale
        if finite:
            grads = _hyper_map(ops.partial(_scale_grad, factor), grads)
            loss_sum = ops.depend(loss_sum, self.optimizer(grads))
        return loss_sum, nll_sum, norm, finite


class TrainStep(nn.Cell):
    """The update's last (or only) micro-batch, then the update: (loss_sum, nll_sum, grad_norm, finite).

    Inputs: the update's target-token count, the loss scale, the learning rate, the dropout key, then the batch: padded
    (src, tgt_in, tgt_out), or packed with segment ids and positions. With an accumulator the
    earlier micro-batches' sums are added before the one reduction.
    """

    def __init__(self, grad_step: GradStep, update_step: UpdateStep, accumulator: Optional[GradAccumulator] = None):
        super().__init__(auto_prefix=False)
        self.grad_step = grad_step
        self.update_step = update_step
        self.accumulator = accumulator

    def construct(self, denominator, scale, lr, key, src, tgt_in, tgt_out, src_seg=None, tgt_seg=None, src_pos=None,
                  tgt_pos=None):
        loss_sum, nll_sum, grads = self.grad_step(denominator, scale, key, src, tgt_in, tgt_out,
                                                  src_seg, tgt_seg, src_pos, tgt_pos)
        if self.accumulator is not None:
            loss_sum, nll_sum, grads = self.accumulator.take(loss_sum, nll_sum, grads)
        return self.update_step(loss_sum, nll_sum, grads, scale, lr)


@dataclass
class StepResult:
    """One optimizer step, in host numbers: sums over the update's global batch."""

    loss_sum: float
    nll_sum: float
    n_tokens: float  # target tokens of the update (every micro-batch of every rank)
    grad_norm: float  # of the unscaled gradients; not finite on a skipped step
    finite: bool  # False: the update was skipped (overflow), parameters and optimizer untouched
    scale: float  # the loss scale this step ran with


def _numpy(array) -> np.ndarray:
    return array.asnumpy() if isinstance(array, ms.Tensor) else np.asarray(array)


def _batch_numpy(batch: Sequence) -> tuple:
    """A batch's arrays as numpy (a RankRows batch stays one, with its global target count)."""
    arrays = tuple(map(_numpy, batch))
    return RankRows(arrays, batch.global_targets) if isinstance(batch, RankRows) else arrays


class Stepper:
    """The host side of an optimizer step: k global micro-batches in, one update, the scale kept.

    Each micro-batch is a collated global batch (every rank holds the same ones and runs its
    share of rows, `local_rows`); the target-token count of all of them is the denominator.
    The first k-1 run `micro_step` (accumulate, no communication), the last `train_step`.
    Micro-batch i of update `step` draws its dropout masks from key (seed, step, i) (model/dropout.py):
    the same masks whether a run got to `step` straight or resumed.
    """

    MAX_MICRO_BATCHES = 1024  # keys of one update: step * 1024 + i

    def __init__(self, train_step: nn.Cell, micro_step: Optional[nn.Cell], scaler, local_rows, pad_id: int,
                 seed: int = 0):
        self.train_step, self.micro_step = train_step, micro_step
        self.scaler, self.local_rows, self.pad_id = scaler, local_rows, pad_id
        self.seed = seed
        self.updates = 0  # the step of an update called without one

    @property
    def grad_step(self) -> GradStep:
        return self._cell().grad_step

    @property
    def update_step(self) -> UpdateStep:
        return self._cell().update_step

    def _cell(self) -> TrainStep:
        # under semi_auto the seam wraps the step in AutoParallel, which keeps it as `network`
        return getattr(self.train_step, "network", self.train_step)

    def __call__(self, *arrays) -> StepResult:
        """One update on one batch (padded: src, tgt_in, tgt_out; packed: also segments and positions)."""
        return self.update([arrays])

    def key(self, step: int, micro_batch: int) -> ms.Tensor:
        """The dropout key of micro-batch `micro_batch` of update `step` (the same on every rank)."""
        return ms.Tensor(step_key(self.seed, step * self.MAX_MICRO_BATCHES + micro_batch), ms.int32)

    def update(self, micro_batches: List[Sequence], step: Optional[int] = None, lr: Optional[float] = None) -> StepResult:
        """One optimizer update over `micro_batches` (at most k of them) at learning rate `lr`
        (default: the optimizer's Parameter as last set); `step` (default: one more than the
        last) keys the dropout masks and names the update in errors."""
        self.updates = self.updates + 1 if step is None else step
        step = self.updates
        if len(micro_batches) > self.MAX_MICRO_BATCHES:
            raise ValueError(f"{len(micro_batches)} micro-batches for one update; at most {self.MAX_MICRO_BATCHES}")
        if len(micro_batches) > 1 and self.micro_step is None:
            raise ValueError(f"{len(micro_batches)} micro-batches for one update, but the step was built "
                             f"without gradient accumulation (train.gradient_accumulation_steps=1)")
        n_tokens = float(sum(batch.global_targets if isinstance(batch, RankRows) else
                             int((_numpy(batch[2]) != self.pad_id).sum()) for batch in micro_batches))
        micro_batches = [_batch_numpy(b) for b in micro_batches]
        denominator = ms.Tensor(max(n_tokens, 1.0), ms.float32)
        scale_used = self.scaler.scale
        scale = ms.Tensor(scale_used, ms.float32)
        if lr is None:
            lr = self.update_step.optimizer.learning_rate.asnumpy()
        lr = ms.Tensor(lr, ms.float32)
        for i, batch in enumerate(micro_batches[:-1]):
            self.micro_step(denominator, scale, self.key(step, i), *map(ms.Tensor, self.local_rows(batch)))
        last = len(micro_batches) - 1
        loss_sum, nll_sum, norm, finite = self.train_step(denominator, scale, lr, self.key(step, last),
                                                          *map(ms.Tensor, self.local_rows(micro_batches[-1])))
        finite = bool(finite.asnumpy())
        self.scaler.update(finite, step)
        return StepResult(float(loss_sum.asnumpy()), float(nll_sum.asnumpy()), n_tokens, float(norm.asnumpy()),
                          finite, scale_used)
