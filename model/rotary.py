"""Rotary position embeddings (Su et al. 2021), in Hugging Face Llama's layout.

Each head's query and key vectors are rotated by position-dependent angles before the dot product,
so scores depend on relative positions. The head's dimensions pair as (i, i + d/2) ("rotate half",
what `transformers`' LlamaForCausalLM and its checkpoints use), frequencies theta^(-2i/d):

    x_rot = x * cos(pos * f) + rotate_half(x) * sin(pos * f),   rotate_half([x1, x2]) = [-x2, x1]

The tables are constants (never trained, never checkpointed, replicated under tensor parallelism).
Positions come per token, so packed rows (positions restart at each sequence) and cached decoding
(a position per row) rotate exactly as the full forward of each sequence alone.
"""
import numpy as np
from mindspore import Tensor, nn, ops


def rotary_tables(max_positions: int, head_dim: int, theta: float):
    """(cos, sin) [max_positions, head_dim] float32, each frequency twice (the two halves)."""
    inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / head_dim))
    angles = np.outer(np.arange(max_positions, dtype=np.float32), inv_freq.astype(np.float32))
    angles = np.concatenate([angles, angles], -1)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def signed_sin(sin: np.ndarray) -> np.ndarray:
    """sin with its first half negated: rotate_half(x) * sin == swap_halves(x) * signed_sin."""
    half = sin.shape[-1] // 2
    return np.concatenate([-sin[..., :half], sin[..., half:]], -1)


def swap_halves(x):
    """[..., d] -> [..., d]: the second half, then the first."""
    half = x.shape[-1] // 2
    return ops.concat((x[..., half:], x[..., :half]), -1)


def apply_rotary(x, rope):
    """x [B, H, L, dk] rotated by rope = (cos, signed sin), each broadcastable to it ([B|1, 1, L, dk]):
    x * cos + rotate_half(x) * sin. The tables are broadcast to x's shape explicitly: MindSpore's CPU Mul with
    an implicit broadcast over the heads held about 16 MB more per call in a compiled graph (bench/README.md,
    bench.llama_block: 2.7x the GPT block's peak memory), the explicit BroadcastTo nothing measurable."""
    cos, sin = rope
    if cos.dtype != x.dtype:
        cos, sin = cos.astype(x.dtype), sin.astype(x.dtype)
    return x * ops.broadcast_to(cos, x.shape) + swap_halves(x) * ops.broadcast_to(sin, x.shape)


class Rotary(nn.Cell):
    """The cos/sin tables of a model, looked up by positions."""

    def __init__(self, head_dim: int, max_positions: int, theta: float):
        super().__init__()
        cos, sin = rotary_tables(max_positions, head_dim, theta)
        self.cos, self.sin = Tensor(cos), Tensor(signed_sin(sin))

    def _lookup(self, positions):
        return (ops.gather(self.cos, positions, 0).expand_dims(1),
                ops.gather(self.sin, positions, 0).expand_dims(1))

    def construct(self, positions):
        """positions [B, L] int -> (cos, signed sin) [B, 1, L, dk] (see apply_rotary)."""
        return self._lookup(positions)

    def at_rows(self, positions):
        """One decoding step, a position per row: positions [B] -> (cos, sin) [B, 1, 1, dk]."""
        return self._lookup(positions.reshape(-1, 1))
