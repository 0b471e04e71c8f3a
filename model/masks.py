"""Padding and causal masks, and their additive form for softmax.

Masks are boolean, True where attention is allowed, shaped to broadcast
against scores [B, H, Lq, Lk].
"""
import mindspore as ms
from mindspore import ops

NEG_INF = -1e9  # large enough to zero a softmax weight, small enough for float32


def padding_mask(ids, pad_id: int):
    """[B, L] token ids -> [B, 1, 1, L] bool, False at padding."""
    return ops.not_equal(ids, pad_id).expand_dims(1).expand_dims(1)


def causal_mask(length: int):
    """[1, 1, L, L] bool, True at and below the diagonal (no peeking ahead)."""
    keep = ops.tril(ops.ones((length, length), ms.int32)) > 0
    return keep.reshape(1, 1, length, length)


def mask_to_bias(mask, dtype=ms.float32):
    """Bool mask -> additive bias: 0 where allowed, NEG_INF where masked."""
    return ops.select(mask, ops.zeros(mask.shape, dtype), ops.fill(dtype, mask.shape, NEG_INF))
