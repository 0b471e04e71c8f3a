"""Adam as nn.Adam computes it for dense gradients, without the sparse kernel nn.Adam also builds.

nn.Adam's constructor creates `FusedSparseAdam` for sparse gradients whatever the model, and MindSpore 2.8+
warns at every construction that this kernel is deprecated: a warning in every worker's log that this
project caused and the user can do nothing about. This optimizer runs the same `Adam` primitive per
parameter with nn.Adam's state names (`moment1.<name>`, `moment2.<name>`, `beta1_power`, `beta2_power`,
`global_step`, `learning_rate`), weight decay by nn.Optimizer's default filter (not LayerNorm's or RMSNorm's
gamma and beta), so checkpoints of either load into the other. The data-parallel sharded variant is
trainer/parallel/zero.py's ShardedAdam.
"""
import mindspore as ms
from mindspore import nn, ops
from mindspore.ops import operations as P

_update = ops.MultitypeFuncGraph("dense_adam_update")


@_update.register("Function", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor",
                  "Tensor", "Tensor")
def _apply(opt, beta1_power, beta2_power, beta1, beta2, eps, lr, gradient, param, moment1, moment2):
    return ops.depend(True, opt(param, moment1, moment2, beta1_power, beta2_power, lr, beta1, beta2, eps, gradient))


class Adam(nn.Optimizer):
    """Adam (Kingma & Ba) with nn.Adam's arithmetic and state for dense gradients (module docstring)."""

    def __init__(self, params, learning_rate, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(learning_rate, params, weight_decay)
        self.beta1 = ms.Tensor(beta1, ms.float32)
        self.beta2 = ms.Tensor(beta2, ms.float32)
        self.eps = ms.Tensor(eps, ms.float32)
        self.beta1_power = ms.Parameter(ms.Tensor(1.0, ms.float32), name="beta1_power")
        self.beta2_power = ms.Parameter(ms.Tensor(1.0, ms.float32), name="beta2_power")
        self.moment1 = self._parameters.clone(prefix="moment1", init="zeros")
        self.moment2 = self._parameters.clone(prefix="moment2", init="zeros")
        self.opt = P.Adam()
        self.hyper_map = ops.HyperMap()

    def construct(self, gradients):
        gradients = self.decay_weight(gradients)
        gradients = self.gradients_centralization(gradients)
        gradients = self.scale_grad(gradients)
        lr = self.get_lr()
        self.assignadd(self.global_step, self.global_step_increase_tensor)
        beta1_power = self.beta1_power * self.beta1
        self.beta1_power = beta1_power
        beta2_power = self.beta2_power * self.beta2
        self.beta2_power = beta2_power
        return self.hyper_map(ops.partial(_update, self.opt, beta1_power, beta2_power, self.beta1, self.beta2,
                                          self.eps, lr), gradients, self._parameters, self.moment1, self.moment2)
