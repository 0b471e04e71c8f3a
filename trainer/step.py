"""The jitted training step: forward, label-smoothed loss, gradients, clipping, Adam update.

One step for every layout. Standalone it is the plain step; with a data-parallel group the
gradients (of the loss summed over this rank's rows, divided by the target tokens of the
whole global batch) are summed across ranks with MindSpore's DistributedGradReducer, which
makes the update exactly the standalone update on the global batch; with a model-parallel
group the clipping norm counts split parameters across their shards and replicated ones once.
"""
from typing import Dict, Optional

import mindspore as ms
from mindspore import nn, ops

from model import cpu_kernels

_hyper_map = ops.HyperMap()


def _scale_grad(scale, grad):
    return grad * scale


def _sum_of_squares(x):
    # the last axis first: MindSpore's CPU ReduceSum over all axes of an [8000, 256] tensor
    # takes ~7 ms, a row-wise sum and then a sum of the rows ~0.5 ms (bench/README.md)
    squares = ops.square(x)
    return squares.sum(-1).sum() if x.ndim > 1 else squares.sum()


class _CompiledSumOfSquares(nn.Cell):
    """Sum of squares of all float32 gradients as one C++ kernel (model/cpu_kernels/grad_norm.cc)."""

    def __init__(self, library: str):
        super().__init__()
        self.kernel = ops.Custom(f"{library}:SumOfSquares", out_shape=lambda *shapes: [1],
                                 out_dtype=lambda *dtypes: ms.float32, func_type="aot")

    def construct(self, grads):
        return self.kernel(*grads).reshape(())


class TrainStep(nn.Cell):
    """One optimiser step on a batch; returns (loss_sum, nll_sum, n_tokens, grad_norm) of the global batch.

    The loss is normalised per target token before differentiating, so the learning
    rate does not depend on how many tokens a batch holds.
    """

    def __init__(self, model: nn.Cell, criterion: nn.Cell, optimizer: nn.Optimizer, clip_norm: float,
                 dp_group: Optional[str] = None, mp_group: Optional[str] = None, mp_size: int = 1,
                 shard_axis: Optional[Dict[str, int]] = None, fused_loss: bool = True,
                 kernel_dir: Optional[str] = None):
        super().__init__(auto_prefix=False)
        self.model = model
        self.criterion = criterion
        self.optimizer = optimizer
        self.clip_norm = clip_norm
        self.weights = optimizer.parameters
        self.grad_fn = ops.value_and_grad(self.forward, None, self.weights, has_aux=True)
        self.dp_sum = ops.AllReduce(ops.ReduceOp.SUM, dp_group) if dp_group else None
        self.grad_reducer = nn.DistributedGradReducer(self.weights, mean=False, group=dp_group) if dp_group else None
        self.mp_sum = ops.AllReduce(ops.ReduceOp.SUM, mp_group) if mp_group else None
        split = shard_axis or {}
        # per-parameter weight in the squared norm: split ones are summed over shards, replicated ones once
        self.norm_weights = tuple(1.0 if p.name in split else 1.0 / mp_size for p in self.weights)
        # with kernel_dir (the CPU, see trainer.run_dir.kernel_dir), the squared norm of
        # unsplit float32 gradients is one C++ kernel
        library = None
        if kernel_dir and mp_size == 1 and all(p.dtype == ms.float32 for p in self.weights):
            library = cpu_kernels.library("grad_norm", str(kernel_dir))
        self.compiled_sum_of_squares = _CompiledSumOfSquares(library) if library else None
        # output projection and loss as one Cell (criterion.from_states) where the model has
        # no parallel layout around its projection; else logits, then the criterion
        self.fused_loss = bool(fused_loss and getattr(model, "projects_locally", lambda: False)()
                               and hasattr(criterion, "from_states"))
        # on the CPU the fused loss also drops padded target positions before projecting them
        # (a dynamic row count: cheap there, while graph sinking on Ascend/GPU wants static shapes)
        self.skip_padding = self.fused_loss and ms.get_context("device_target") == "CPU"

    def forward(self, src, tgt_in, tgt_out, denominator, src_seg=None, tgt_seg=None, src_pos=None, tgt_pos=None):
        """Loss of this rank's rows per target token of the global batch, with the sums as auxiliaries."""
        if self.fused_loss:
            memory, src_bias = self.model.encode(src, src_seg, src_pos)
            states = self.model.decode_states(tgt_in, memory, src_bias, src_seg, tgt_seg, tgt_pos)
            loss_sum, nll_sum, n_tokens = self.criterion.from_states(states, self.model.output_weight(), tgt_out,
                                                                     self.skip_padding)
        else:
            logits = self.model(src, tgt_in, src_seg, tgt_seg, src_pos, tgt_pos)
            loss_sum, nll_sum, n_tokens = self.criterion(logits, tgt_out)
        return loss_sum / denominator, loss_sum, nll_sum, n_tokens

    def _norm(self, grads):
        if self.compiled_sum_of_squares is not None:
            total = self.compiled_sum_of_squares(grads)
        else:
            total = ops.addn([_sum_of_squares(g.astype(ms.float32)) * w for g, w in zip(grads, self.norm_weights)])
        if self.mp_sum is not None:
            total = self.mp_sum(total)
        return ops.sqrt(total)

    def construct(self, src, tgt_in, tgt_out, src_seg=None, tgt_seg=None, src_pos=None, tgt_pos=None):
        """A padded batch (src, tgt_in, tgt_out), or a packed one with segment ids and positions too."""
        n_tokens = ops.not_equal(tgt_out, self.criterion.pad_id).astype(ms.float32).sum()
        if self.dp_sum is not None:
            n_tokens = self.dp_sum(n_tokens)
        packed = (src_seg, tgt_seg, src_pos, tgt_pos)
        (_, loss_sum, nll_sum, _), grads = self.grad_fn(src, tgt_in, tgt_out, ops.maximum(n_tokens, 1.0), *packed)
        if self.grad_reducer is not None:
            grads = self.grad_reducer(grads)
            loss_sum = self.dp_sum(loss_sum)
            nll_sum = self.dp_sum(nll_sum)
        norm = self._norm(grads)
        if self.clip_norm > 0:
            scale = ops.minimum(self.clip_norm / (norm + 1e-6), 1.0)
            grads = _hyper_map(ops.partial(_scale_grad, scale), grads)
        self.optimizer(grads)
        return loss_sum, nll_sum, n_tokens, norm
