"""The training step in two Cells: gradients of a batch, then the update.

    GradStep    forward, loss, backward on this rank's rows -> loss sums, token count, gradients
    UpdateStep  reduce across data-parallel ranks, clipping norm, clip, optimizer update
    TrainStep   one after the other, compiled as one graph

The loss is normalised per target token of the whole global batch before differentiating,
so the learning rate does not depend on how many tokens a batch holds, and summing the
ranks' gradients (trainer/parallelize.py's reduction) gives exactly the standalone update on
the global batch. Gradient accumulation and loss scaling belong between the two Cells.
"""
from typing import Optional, Sequence

import mindspore as ms
from mindspore import nn, ops

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
    """Gradients of one batch: (loss_sum, nll_sum, n_tokens, grads) of this rank's rows.

    `token_sum` (from the parallel seam) sums the target count over data-parallel ranks, so
    the gradients are per target token of the global batch; n_tokens is that global count.
    """

    def __init__(self, loss_fn: nn.Cell, weights, pad_id: int, token_sum: Optional[nn.Cell] = None):
        super().__init__(auto_prefix=False)
        self.loss_fn = loss_fn
        self.pad_id = pad_id
        self.token_sum = token_sum
        self.grad_fn = ops.value_and_grad(self.forward, None, weights, has_aux=True)

    def forward(self, src, tgt_in, tgt_out, denominator, src_seg=None, tgt_seg=None, src_pos=None, tgt_pos=None):
        """Loss of this rank's rows per target token of the global batch, with the sums as auxiliaries."""
        loss_sum, nll_sum, _ = self.loss_fn(src, tgt_in, tgt_out, src_seg, tgt_seg, src_pos, tgt_pos)
        return loss_sum / denominator, loss_sum, nll_sum

    def construct(self, src, tgt_in, tgt_out, src_seg=None, tgt_seg=None, src_pos=None, tgt_pos=None):
        n_tokens = ops.not_equal(tgt_out, self.pad_id).astype(ms.float32).sum()
        if self.token_sum is not None:
            n_tokens = self.token_sum(n_tokens)
        (_, loss_sum, nll_sum), grads = self.grad_fn(src, tgt_in, tgt_out, ops.maximum(n_tokens, 1.0),
                                                     src_seg, tgt_seg, src_pos, tgt_pos)
        return loss_sum, nll_sum, n_tokens, grads


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
    """Reduce (seam's `reduction`: gradients and loss sums over data-parallel ranks), clip, apply.

    Returns (loss_sum, nll_sum, grad_norm) of the global batch.
    """

    def __init__(self, optimizer: nn.Optimizer, clip_norm: float, reduction: nn.Cell, norm: GradNorm):
        super().__init__(auto_prefix=False)
        self.optimizer = optimizer
        self.clip_norm = clip_norm
        self.reduction = reduction
        self.norm = norm

    def construct(self, loss_sum, nll_sum, grads):
        grads, loss_sum, nll_sum = self.reduction(grads, loss_sum, nll_sum)
        norm = self.norm(grads)
        if self.clip_norm > 0:
            scale = ops.minimum(self.clip_norm / (norm + 1e-6), 1.0)
            grads = _hyper_map(ops.partial(_scale_grad, scale), grads)
        self.optimizer(grads)
        return loss_sum, nll_sum, norm


class TrainStep(nn.Cell):
    """One optimizer step on a batch; returns (loss_sum, nll_sum, n_tokens, grad_norm) of the global batch.

    A padded batch is (src, tgt_in, tgt_out); a packed one adds segment ids and positions.
    """

    def __init__(self, grad_step: GradStep, update_step: UpdateStep):
        super().__init__(auto_prefix=False)
        self.grad_step = grad_step
        self.update_step = update_step

    def construct(self, src, tgt_in, tgt_out, src_seg=None, tgt_seg=None, src_pos=None, tgt_pos=None):
        loss_sum, nll_sum, n_tokens, grads = self.grad_step(src, tgt_in, tgt_out, src_seg, tgt_seg, src_pos, tgt_pos)
        loss_sum, nll_sum, norm = self.update_step(loss_sum, nll_sum, grads)
        return loss_sum, nll_sum, n_tokens, norm
