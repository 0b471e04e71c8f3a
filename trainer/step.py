"""The jitted training step: forward, label-smoothed loss, gradients, clipping, Adam update."""
import mindspore as ms
from mindspore import nn, ops

_hyper_map = ops.HyperMap()


def _scale_grad(scale, grad):
    return grad * scale


def global_norm(grads):
    """L2 norm over all gradient tensors."""
    return ops.sqrt(ops.addn([ops.reduce_sum(ops.square(g.astype(ms.float32))) for g in grads]))


class TrainStep(nn.Cell):
    """One optimiser step on a batch; returns (loss_sum, nll_sum, n_tokens, grad_norm).

    The loss is normalised per target token before differentiating, so the learning
    rate does not depend on how many tokens a batch holds.
    """

    def __init__(self, model: nn.Cell, criterion: nn.Cell, optimizer: nn.Optimizer, clip_norm: float):
        super().__init__(auto_prefix=False)
        self.model = model
        self.criterion = criterion
        self.optimizer = optimizer
        self.clip_norm = clip_norm
        self.weights = optimizer.parameters
        self.grad_fn = ops.value_and_grad(self.forward, None, self.weights, has_aux=True)

    def forward(self, src, tgt_in, tgt_out):
        """Mean loss per target token, with the sums as auxiliary outputs."""
        logits = self.model(src, tgt_in)
        loss_sum, nll_sum, n_tokens = self.criterion(logits, tgt_out)
        return loss_sum / ops.maximum(n_tokens, 1.0), loss_sum, nll_sum, n_tokens

    def construct(self, src, tgt_in, tgt_out):
        (_, loss_sum, nll_sum, n_tokens), grads = self.grad_fn(src, tgt_in, tgt_out)
        norm = global_norm(grads)
        if self.clip_norm > 0:
            scale = ops.minimum(self.clip_norm / (norm + 1e-6), 1.0)
            grads = _hyper_map(ops.partial(_scale_grad, scale), grads)
        self.optimizer(grads)
        return loss_sum, nll_sum, n_tokens, norm
