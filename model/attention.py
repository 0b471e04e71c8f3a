"""Scaled dot-product attention and multi-head attention (section 3.2)."""
import math

import mindspore as ms
from mindspore import nn, ops

from model.dropout import Dropout
from model.rotary import apply_rotary


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
        scores = self.qk(q * self.scale, k).astype(ms.float32)  # [B, H, Lq, Lk]
        # the mask broadcast explicitly: MindSpore's CPU Add with an implicit broadcast over the heads held more
        # memory in a compiled graph (bench.graph_memory: -43 to -55 MiB a validation graph of gpt_hour's size)
        scores = scores + ops.broadcast_to(bias, scores.shape)
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
    """Projects to n_heads query subspaces and n_kv_heads key/value subspaces, attends in each query head,
    concatenates, projects back.

    n_kv_heads < n_heads is grouped-query attention (1: multi-query): query head i reads key/value head
    i // (n_heads / n_kv_heads), as Hugging Face's `repeat_kv`; caches keep the n_kv_heads heads only.
    `rope` (model/rotary.py: cos and sin per position) rotates queries and keys when positions are rotary.
    `construct` is the full computation; `project_kv` and `attend` split it so that decoding can keep
    projected keys and values in a cache.
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float, n_kv_heads: int = 0, bias: bool = True):
        super().__init__()
        self.n_heads = n_heads
        self.n_kv_heads = n_kv_heads or n_heads
        self.d_k = d_model // n_heads
        self.w_q = nn.Dense(d_model, d_model, has_bias=bias)
        self.w_k = nn.Dense(d_model, self.n_kv_heads * self.d_k, has_bias=bias)
        self.w_v = nn.Dense(d_model, self.n_kv_heads * self.d_k, has_bias=bias)
        self.w_o = nn.Dense(d_model, d_model, has_bias=bias)
        self.attention = ScaledDotProductAttention(self.d_k, dropout)

    def split_heads(self, x, heads: int = 0):
        """[B, L, heads * dk] -> [B, heads, L, dk] (heads: n_heads unless given)."""
        b, length, _ = x.shape
        heads = heads or self.n_heads
        return x.reshape(b, length, heads, self.d_k).transpose(0, 2, 1, 3)

    def merge_heads(self, x):
        """[B, H, L, dk] -> [B, L, d]."""
        b, _, length, _ = x.shape
        return x.transpose(0, 2, 1, 3).reshape(b, length, self.n_heads * self.d_k)

    def expand_kv(self, x):
        """[B, n_kv_heads, L, dk] -> [B, n_heads, L, dk]: each key/value head repeated for its query heads."""
        if self.n_kv_heads == self.n_heads:
            return x
        b, kv, length, dk = x.shape
        rep = self.n_heads // self.n_kv_heads
        return ops.broadcast_to(x.expand_dims(2), (b, kv, rep, length, dk)).reshape(b, kv * rep, length, dk)

    def project_kv(self, kv_input, rope=None):
        """[B, Lk, d] -> keys and values, each [B, n_kv_heads, Lk, dk] (keys rotated when `rope` is given)."""
        k = self.split_heads(self.w_k(kv_input), self.n_kv_heads)
        if rope is not None:
            k = apply_rotary(k, rope)
        return k, self.split_heads(self.w_v(kv_input), self.n_kv_heads)

    def project_q(self, query_input, rope=None):
        """[B, Lq, d] -> queries [B, H, Lq, dk] (rotated when `rope` is given)."""
        q = self.split_heads(self.w_q(query_input))
        return q if rope is None else apply_rotary(q, rope)

    def attend(self, query_input, k, v, bias, rope=None):
        """query_input [B, Lq, d] against projected k, v -> [B, Lq, d]."""
        q = self.project_q(query_input, rope)
        return self.w_o(self.merge_heads(self.attention(q, self.expand_kv(k), self.expand_kv(v), bias)))

    def cached(self, x, write, cache_k, cache_v, bias, prefix_k=None, prefix_v=None, prefix_bias=None, rope=None):
        """Self-attention of one new position x [B, 1, d] over a key/value cache [B, Hkv, T, dk]: its key and
        value go into the slot `write` [1, 1, T, 1] marks (still zero, so adding stores them exactly), then
        it attends to the slots `bias` leaves visible. Returns (output [B, 1, d], cache_k, cache_v).

        A fixed prefix (a decoder-only model's prompt: prefix_k/v [B, Hkv, P, dk], prefix_bias [B, 1, 1, P])
        is attended to in the same softmax, before the cache's slots. `rope`: this position's rotation."""
        k_new, v_new = self.project_kv(x, rope)  # [B, Hkv, 1, dk]
        cache_k = cache_k + write * k_new
        cache_v = cache_v + write * v_new
        if prefix_k is None:
            return self.attend(x, cache_k, cache_v, bias, rope), cache_k, cache_v
        q = self.project_q(x, rope)
        out = self.attention.over_two(q, self.expand_kv(prefix_k), self.expand_kv(prefix_v), prefix_bias,
                                      self.expand_kv(cache_k), self.expand_kv(cache_v), bias)
        return self.w_o(self.merge_heads(out)), cache_k, cache_v

    def construct(self, query_input, kv_input, bias, rope=None):
        """query_input [B, Lq, d], kv_input [B, Lk, d], bias [B|1, 1, Lq|1, Lk] -> [B, Lq, d]. `rope` only for
        self-attention (queries and keys at the same positions)."""
        k, v = self.project_kv(kv_input, rope)
        return self.attend(query_input, k, v, bias, rope)
