"""The normalisation of a block: LayerNorm (the paper) or RMSNorm (Zhang & Sennrich 2019; Llama)."""
import mindspore as ms
from mindspore import Parameter, nn, ops
from mindspore.common.initializer import initializer


class RMSNorm(nn.Cell):
    """x / sqrt(mean(x^2) + eps) * gamma over the last axis, computed in float32 whatever the input's dtype
    (as Hugging Face's LlamaRMSNorm), the result cast back before the scale.

    The scale is named `gamma` like LayerNorm's, so that weight decay skips it (nn.Adam's default filter and
    trainer/parallel/zero.py) and the checkpoint tools treat it as a norm.
    """

    def __init__(self, d_model: int, eps: float):
        super().__init__()
        self.gamma = Parameter(initializer("ones", (d_model,), ms.float32), name="gamma")
        self.eps = eps

    def construct(self, x):
        # broadcasts made explicit: MindSpore's CPU Mul with an implicit broadcast holds several times its output
        # in a compiled graph (the same finding as model/rotary.py's apply_rotary); casts only where needed
        h = x if x.dtype == ms.float32 else x.astype(ms.float32)
        scale = ops.rsqrt(ops.mean(ops.square(h), -1, keep_dims=True) + self.eps)
        h = h * ops.broadcast_to(scale, h.shape)
        if x.dtype != ms.float32:
            h, gamma = h.astype(x.dtype), self.gamma.astype(x.dtype)
        else:
            gamma = self.gamma
        return h * ops.broadcast_to(gamma, h.shape)


def make_norm(kind: str, d_model: int, eps: float) -> nn.Cell:
    """`model.norm`'s Cell: nn.LayerNorm (layernorm) or RMSNorm (rmsnorm)."""
    if kind == "rmsnorm":
        return RMSNorm(d_model, eps)
    return nn.LayerNorm((d_model,), epsilon=eps)
