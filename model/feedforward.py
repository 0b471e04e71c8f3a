"""Position-wise feed-forward network: ReLU (the paper's) or SwiGLU (Shazeer 2020; PaLM, LLaMA)."""
from mindspore import nn, ops

from model.dropout import Dropout


class FeedForward(nn.Cell):
    """relu: FFN(x) = max(0, x W1 + b1) W2 + b2; swiglu: (silu(x W1 + b1) * (x W3 + b3)) W2 + b2.

    Applied to every position alike. SwiGLU's gate W1 and value W3 are both split by output columns
    under tensor parallelism, W2 by input rows (model/parallel/layout.py).
    """

    def __init__(self, d_model: int, d_ff: int, activation_dropout: float, kind: str = "relu", bias: bool = True):
        super().__init__()
        self.swiglu = kind == "swiglu"
        self.w1 = nn.Dense(d_model, d_ff, has_bias=bias)
        if self.swiglu:
            self.w3 = nn.Dense(d_model, d_ff, has_bias=bias)
        self.w2 = nn.Dense(d_ff, d_model, has_bias=bias)
        self.dropout = Dropout(activation_dropout)

    def construct(self, x):
        """x [B, L, d] -> [B, L, d]."""
        if self.swiglu:
            return self.w2(self.dropout(ops.silu(self.w1(x)) * self.w3(x)))
        return self.w2(self.dropout(ops.relu(self.w1(x))))
