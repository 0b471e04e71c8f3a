"""Scaled dot-product attention and multi-head attention (section 3.2)."""
import math

import mindspore as ms
from mindspore import nn, ops

from model.dropout import Dropout


class ScaledDotProductAttention(nn.Cell):
    """softmax(Q K^T / sqrt(d_k) + bias) V, with dropout on the weights.

    The softmax runs in float32 whatever precision the matmuls run in (trainer/precision.py).
    """

    def __init__(self, d_k: int, dropout: float):
        super().__init__()
        self.scale = 1.0 / math.sqrt(d_k)
        self.qk = ops.BatchMatMul(transpose_b=True)
        self.softmax = ops.Softmax(-1)  # an attribute, so that layouts and trainer/cpu can reach it
        self.av = ops.BatchMatMul()
        self.dropout = Dropout(dropout)

    def construct(self, q, k, v, bias):
        """q [B, H, Lq, dk], k and v [B, H, Lk, dk], bias broadcastable to [B, H, Lq, Lk]."""
        scores = self.qk(q * self.scale, k).astype(ms.float32) + bias  # [B, H, Lq, Lk]
        weights = self.dropout(self.softmax(scores)).astype(v.dtype)
        return self.av(weights, v)  # [B, H, Lq, dk]

    def over_two(self, q, k1, v1, bias1, k2, v2, bias2):
        """Attention over the keys of two caches as one softmax, without concatenating the caches (only the
        scores, [B, H, Lq, L1 + L2], are joined): what decoding against a fixed prompt cache plus the
        generated tokens' cache needs each step."""
        q = q * self.scale
        scores = ops.concat((self.qk(q, k1).astype(ms.float32) + bias1,
                             self.qk(q, k2).astype(ms.float32) + bias2), -1)
        weights = self.dropout(self.softmax(scores)).astype(v1.dtype)
        first = k1.shape[2]
        return self.av(weights[..., :first], v1) + self.av(weights[..., first:], v2)


class MultiHeadAttention(nn.Cell):
    """Projects to n_heads subspaces, attends in each, concatenates, projects back.

    `construct` is the full computation; `project_kv` and `attend` split it so that
    decoding can keep projected keys and values in a cache.
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads = n_heads
        self.d_k = d_model // n_heads
        self.w_q = nn.Dense(d_model, d_model)
        self.w_k = nn.Dense(d_model, d_model)
        self.w_v = nn.Dense(d_model, d_model)
        self.w_o = nn.Dense(d_model, d_model)
        self.attention = ScaledDotProductAttention(self.d_k, dropout)

    def split_heads(self, x):
        """[B, L, d] -> [B, H, L, dk]."""
        b, length, _ = x.shape
        return x.reshape(b, length, self.n_heads, self.d_k).transpose(0, 2, 1, 3)

    def merge_heads(self, x):
        """[B, H, L, dk] -> [B, L, d]."""
        b, _, length, _ = x.shape
        return x.transpose(0, 2, 1, 3).reshape(b, length, self.n_heads * self.d_k)

    def project_kv(self, kv_input):
        """[B, Lk, d] -> keys and values, each [B, H, Lk, dk]."""
        return self.split_heads(self.w_k(kv_input)), self.split_heads(self.w_v(kv_input))

    def attend(self, query_input, k, v, bias):
        """query_input [B, Lq, d] against projected k, v -> [B, Lq, d]."""
        q = self.split_heads(self.w_q(query_input))
        return self.w_o(self.merge_heads(self.attention(q, k, v, bias)))

    def cached(self, x, write, cache_k, cache_v, bias, prefix_k=None, prefix_v=None, prefix_bias=None):
        """Self-attention of one new position x [B, 1, d] over a key/value cache [B, H, T, dk]: its key and
        value go into the slot `write` [1, 1, T, 1] marks (still zero, so adding stores them exactly), then
        it attends to the slots `bias` leaves visible. Returns (output [B, 1, d], cache_k, cache_v).

        A fixed prefix (a decoder-only model's prompt: prefix_k/v [B, H, P, dk], prefix_bias [B, 1, 1, P])
        is attended to in the same softmax, before the cache's slots."""
        k_new, v_new = self.project_kv(x)  # [B, H, 1, dk]
        cache_k = cache_k + write * k_new
        cache_v = cache_v + write * v_new
        if prefix_k is None:
            return self.attend(x, cache_k, cache_v, bias), cache_k, cache_v
        q = self.split_heads(self.w_q(x))
        out = self.attention.over_two(q, prefix_k, prefix_v, prefix_bias, cache_k, cache_v, bias)
        return self.w_o(self.merge_heads(out)), cache_k, cache_v

    def construct(self, query_input, kv_input, bias):
        """query_input [B, Lq, d], kv_input [B, Lk, d], bias [B|1, 1, Lq|1, Lk] -> [B, Lq, d]."""
        k, v = self.project_kv(kv_input)
        return self.attend(query_input, k, v, bias)
