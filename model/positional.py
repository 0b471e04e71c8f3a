"""Positions: the sinusoidal encoding (Vaswani et al., section 3.5) or a learned table (GPT-2)."""
import math

import numpy as np
import mindspore as ms
from mindspore import nn, ops
from mindspore.common.initializer import Normal, initializer

from model.dropout import Dropout


def sinusoid_table(max_positions: int, d_model: int) -> np.ndarray:
    """PE[pos, 2i] = sin(pos / 10000^(2i/d)), PE[pos, 2i+1] = cos(same)."""
    pos = np.arange(max_positions, dtype=np.float64)[:, None]  # [P, 1]
    div = np.exp(np.arange(0, d_model, 2, dtype=np.float64) * (-math.log(10000.0) / d_model))  # [d/2]
    table = np.zeros((max_positions, d_model), dtype=np.float64)
    table[:, 0::2] = np.sin(pos * div)
    table[:, 1::2] = np.cos(pos * div)
    return table.astype(np.float32)


class PositionalEncoding(nn.Cell):
    """Adds a position table to token embeddings, then dropout.

    sinusoidal: the fixed sinusoid table, a constant (never trained, never checkpointed); learned: a
    trained [max_positions, d_model] Parameter `table`, replicated under tensor parallelism; rotary: nothing
    is added here (attention rotates queries and keys, model/rotary.py), only the dropout.
    """

    def __init__(self, d_model: int, max_positions: int, dropout: float, kind: str = "sinusoidal"):
        super().__init__()
        if kind == "learned":
            # fairseq's learned positions: N(0, d^-1/2), added to embeddings scaled by sqrt(d)
            self.table = ms.Parameter(initializer(Normal(d_model ** -0.5), (max_positions, d_model), ms.float32),
                                      name="table")
        elif kind == "sinusoidal":
            self.table = ms.Tensor(sinusoid_table(max_positions, d_model))
        self.adds = kind != "rotary"
        self.dropout = Dropout(dropout)

    def construct(self, x, positions=None):
        """x [B, L, d] -> x + PE[:L], or x + PE[positions] for positions [B, L] (packed rows)."""
        if not self.adds:
            return self.dropout(x)
        if positions is None:
            return self.dropout(x + self.table[:x.shape[1]].expand_dims(0))
        return self.dropout(x + ops.gather(self.table, positions, 0))

    def at(self, x, position):
        """One decoding step: x [B, 1, d] at integer tensor `position` []."""
        if not self.adds:
            return self.dropout(x)
        row = ops.gather(self.table, position.reshape(1), 0)  # [1, d]
        return self.dropout(x + row.expand_dims(0))

    def at_rows(self, x, positions):
        """One decoding step at a position per row: x [B, 1, d], integer tensor `positions` [B]."""
        if not self.adds:
            return self.dropout(x)
        return self.dropout(x + ops.gather(self.table, positions, 0).expand_dims(1))
