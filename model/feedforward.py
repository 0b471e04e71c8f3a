"""Position-wise feed-forward network: Dense -> ReLU -> dropout -> Dense."""
from mindspore import nn, ops

from model.dropout import Dropout


class FeedForward(nn.Cell):
    """FFN(x) = max(0, x W1 + b1) W2 + b2, applied to every position alike."""

    def __init__(self, d_model: int, d_ff: int, activation_dropout: float):
        super().__init__()
        self.w1 = nn.Dense(d_model, d_ff)
        self.w2 = nn.Dense(d_ff, d_model)
        self.dropout = Dropout(activation_dropout)

    def construct(self, x):
        """x [B, L, d] -> [B, L, d]."""
        return self.w2(self.dropout(ops.relu(self.w1(x))))
