"""Padding, causal and segment (packed rows) masks, and their additive form for softmax.

Masks are boolean, True where attention is allowed, shaped to broadcast
against scores [B, H, Lq, Lk].
"""
import mindspore as ms
from mindspore import ops

# large enough to zero a softmax weight (exp(-30000) is 0 in float32), small enough to stay
# finite when mixed precision casts the bias to float16 (largest 65504): -1e9 became -inf there
NEG_INF = -30000.0


def padding_mask(ids, pad_id: int):
    """[B, L] token ids -> [B, 1, 1, L] bool, False at padding."""
    return ops.not_equal(ids, pad_id).expand_dims(1).expand_dims(1)


def causal_mask(length: int):
    """[1, 1, L, L] bool, True at and below the diagonal (no peeking ahead)."""
    keep = ops.tril(ops.ones((length, length), ms.int32)) > 0
    return keep.reshape(1, 1, length, length)


def segment_mask(q_seg, k_seg, causal: bool = False):
    """Packed rows: q_seg [B, Lq], k_seg [B, Lk] segment ids (0 at padding) -> [B, 1, Lq, Lk] bool.

    True where query and key belong to the same sentence and the key is not padding
    (and, if `causal`, not ahead of the query), so sentences packed into one row never
    see each other.
    """
    same = ops.logical_and(ops.equal(q_seg.expand_dims(2), k_seg.expand_dims(1)),
                           ops.not_equal(k_seg, 0).expand_dims(1))  # [B, Lq, Lk]
    if causal:
        same = ops.logical_and(same, causal_mask(q_seg.shape[1]).reshape(1, q_seg.shape[1], q_seg.shape[1]))
    return same.expand_dims(1)


def mask_to_bias(mask, dtype=ms.float32):
    """Bool mask -> additive bias: 0 where allowed, NEG_INF where masked."""
    # NEG_INF written out: mindspore.rewrite (precision O1) copies this function into a module that
    # imports only the names the rewritten Cells use themselves, not this file's globals
    return ops.select(mask, ops.zeros(mask.shape, dtype), ops.fill(dtype, mask.shape, -30000.0))


def cache_slots(position, max_len: int, dtype):
    """Incremental decoding at integer tensor `position` [] over a cache of `max_len` slots:
    write [1, 1, T, 1] (1.0 at this position's slot, else 0.0) and the self-attention bias
    [1, 1, 1, T] that hides the slots not written yet."""
    slots = ops.arange(max_len, dtype=ms.int32).reshape(1, 1, max_len, 1)
    write = ops.equal(slots, position).astype(dtype)
    visible = ops.less_equal(slots.reshape(1, 1, 1, max_len), position)
    return write, mask_to_bias(visible)
