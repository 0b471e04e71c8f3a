"""Residual connection with a norm (LayerNorm or RMSNorm): post-LN (paper, course) or pre-LN."""
from mindspore import nn

from model.dropout import Dropout
from model.norm import make_norm


class AddNorm(nn.Cell):
    """Wraps a sublayer: post-LN  LN(x + drop(f(x)))  or pre-LN  x + drop(f(LN(x)))."""

    def __init__(self, d_model: int, dropout: float, pre_norm: bool, eps: float, kind: str = "layernorm"):
        super().__init__()
        self.norm = make_norm(kind, d_model, eps)
        self.dropout = Dropout(dropout)
        self.pre_norm = pre_norm

    def before(self, x):
        """Input to the sublayer."""
        return self.norm(x) if self.pre_norm else x

    def after(self, x, sublayer_out):
        """Combine the residual `x` with the sublayer's output."""
        y = x + self.dropout(sublayer_out)
        return y if self.pre_norm else self.norm(y)
