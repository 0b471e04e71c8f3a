"""Encoder and decoder layers (section 3.1)."""
from mindspore import nn

from model.attention import MultiHeadAttention
from model.config import ModelConfig
from model.feedforward import FeedForward
from model.residual import AddNorm


def _add_norm(cfg: ModelConfig) -> AddNorm:
    return AddNorm(cfg.d_model, cfg.dropout, cfg.pre_norm, cfg.layer_norm_eps, cfg.norm)


def _attention(cfg: ModelConfig) -> MultiHeadAttention:
    return MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.attention_dropout, cfg.kv_heads, cfg.bias)


def _ffn(cfg: ModelConfig) -> FeedForward:
    return FeedForward(cfg.d_model, cfg.d_ff, cfg.activation_dropout, cfg.ffn, cfg.bias)


class EncoderLayer(nn.Cell):
    """Self-attention then FFN, each wrapped in a residual + LayerNorm: the encoder's layer, and, under
    a causal bias, the decoder-only model's block (model/decoder_only.py)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.self_attn = _attention(cfg)
        self.ffn = _ffn(cfg)
        self.norm1 = _add_norm(cfg)
        self.norm2 = _add_norm(cfg)

    def construct(self, x, src_bias, rope=None):
        """x [B, Ls, d], src_bias [B, 1, 1, Ls] (packed rows: [B, 1, Ls, Ls]) -> [B, Ls, d]. `rope`: rotary
        positions' (cos, sin) of x's positions (model/rotary.py), None otherwise."""
        h = self.norm1.before(x)
        x = self.norm1.after(x, self.self_attn(h, h, src_bias, rope))
        return self.norm2.after(x, self.ffn(self.norm2.before(x)))

    def with_kv(self, x, bias, rope=None):
        """`construct`, also returning the self-attention's keys and values [B, Hkv, L, dk] (a prompt's cache)."""
        h = self.norm1.before(x)
        k, v = self.self_attn.project_kv(h, rope)
        x = self.norm1.after(x, self.self_attn.attend(h, k, v, bias, rope))
        return self.norm2.after(x, self.ffn(self.norm2.before(x))), k, v

    def step(self, x, write, self_k, self_v, self_bias, prefix_k=None, prefix_v=None, prefix_bias=None,
             rope=None):
        """One incremental decoding step of a causal stack (as DecoderLayer.step, without cross-attention).
        A decoder-only model's prompt comes as a fixed prefix cache (`MultiHeadAttention.cached`)."""
        h = self.norm1.before(x)
        out, self_k, self_v = self.self_attn.cached(h, write, self_k, self_v, self_bias, prefix_k, prefix_v,
                                                    prefix_bias, rope)
        x = self.norm1.after(x, out)
        return self.norm2.after(x, self.ffn(self.norm2.before(x))), self_k, self_v


class DecoderLayer(nn.Cell):
    """Masked self-attention, encoder-decoder attention, FFN; each with residual + LayerNorm."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.self_attn = _attention(cfg)
        self.cross_attn = _attention(cfg)
        self.ffn = _ffn(cfg)
        self.norm1 = _add_norm(cfg)
        self.norm2 = _add_norm(cfg)
        self.norm3 = _add_norm(cfg)

    def construct(self, x, memory, tgt_bias, src_bias):
        """x [B, Lt, d], memory [B, Ls, d], tgt_bias [B, 1, Lt, Lt], src_bias [B, 1, 1, Ls] (packed: [B, 1, Lt, Ls])."""
        h = self.norm1.before(x)
        x = self.norm1.after(x, self.self_attn(h, h, tgt_bias))
        x = self.norm2.after(x, self.cross_attn(self.norm2.before(x), memory, src_bias))
        return self.norm3.after(x, self.ffn(self.norm3.before(x)))

    def step(self, x, write, self_k, self_v, self_bias, cross_k, cross_v, src_bias):
        """One incremental decoding step.

        x [B, 1, d]; write [1, 1, T, 1] (1.0 at this position, else 0.0) marks the cache slot of this position;
        self_k/self_v [B, H, T, dk] hold earlier positions; self_bias [1, 1, 1, T] hides
        slots not yet written; cross_k/cross_v [B, H, Ls, dk] are the projected memory.
        Returns the output [B, 1, d] and the updated self-attention caches.
        """
        h = self.norm1.before(x)
        out, self_k, self_v = self.self_attn.cached(h, write, self_k, self_v, self_bias)
        x = self.norm1.after(x, out)
        x = self.norm2.after(x, self.cross_attn.attend(self.norm2.before(x), cross_k, cross_v, src_bias))
        return self.norm3.after(x, self.ffn(self.norm3.before(x))), self_k, self_v
