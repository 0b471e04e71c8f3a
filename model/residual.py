"""Residual connection with LayerNorm: post-LN (paper, course) or pre-LN."""
from mindspore import nn

from model.dropout import Dropout


class AddNorm(nn.Cell):
    """Wraps a sublayer: post-LN  LN(x + drop(f(x)))  or pre-LN  x + drop(f(LN(x)))."""

    def __init__(self, d_model: int, dropout: float, pre_norm: bool, eps: float):
        super().__init__()
        self.norm = nn.LayerNorm((d_model,), epsilon=eps)
        self.dropout = Dropout(dropout)
        self.pre_norm = pre_norm

    def before(self, x):
        """Input to the sublayer."""
        return self.norm(x) if self.pre_norm else x

    def after(self, x, sublayer_out):
        """Combine the residual `x` with the sublayer's output."""
        y = x + self.dropout(sublayer_out)
        return y if self.pre_norm else self.norm(y)
