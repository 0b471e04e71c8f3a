"""The decoder-only (GPT-style) Transformer, built from the encoder-decoder's blocks.

One stack of self-attention + FFN blocks (model/layers.py EncoderLayer) under a causal bias,
embeddings tied to the output projection, sinusoidal positions, pre-LN by default in recipes
(`model.pre_norm`), with a final LayerNorm then. The same parallel layout table applies
(model/parallel/layout.py: attention and FFN by their generic paths, `embed` by vocabulary rows,
`logits` vocabulary-parallel). Incremental decoding keeps one key/value cache per block.

Not wired into the trainer yet (issue 18): it is a model with tests (causality, cached decoding
equal to recomputation, packed rows, parameter count); the sequence format, data, search and
recipes are still to come.
"""
import math

import mindspore as ms
from mindspore import nn, ops
from mindspore.common.initializer import Normal

from model.config import ModelConfig
from model.dropout import bind_dropout_key
from model.layers import EncoderLayer
from model.masks import cache_slots, causal_mask, mask_to_bias, padding_mask, segment_mask
from model.positional import PositionalEncoding
from model.transformer import Logits


class DecoderOnly(nn.Cell):
    """Causal language model over one vocabulary; `construct` returns next-token logits [B, L, V].

    Its depth is `cfg.decoder_layers`; `cfg.encoder_layers` is not used.
    """

    def __init__(self, cfg: ModelConfig, vocab: int, pad_id: int):
        super().__init__()
        cfg.validate()
        self.cfg, self.vocab, self.pad_id = cfg, vocab, pad_id
        self.embed_scale = math.sqrt(cfg.d_model)
        self.embed = nn.Embedding(vocab, cfg.d_model, embedding_table=Normal(cfg.d_model ** -0.5))
        self.positions = PositionalEncoding(cfg.d_model, cfg.max_positions, cfg.dropout)
        self.layers = nn.CellList([EncoderLayer(cfg) for _ in range(cfg.decoder_layers)])
        if cfg.pre_norm:
            self.final_norm = nn.LayerNorm((cfg.d_model,), epsilon=cfg.layer_norm_eps)
        self.logits = Logits()
        self.dropout_key = bind_dropout_key(self)

    def output_weight(self):
        """The output projection's weight [V, d]: the embedding table (tied)."""
        return self.embed.embedding_table

    def project(self, x):
        """States [B, L, d] -> logits [B, L, V]."""
        b, length, d = x.shape
        return self.logits(x.reshape(b * length, d), self.output_weight()).reshape(b, length, self.vocab)

    def states(self, tokens, seg=None, pos=None):
        """tokens [B, L] -> final states [B, L, d]. Packed rows give segment ids and positions [B, L]:
        each sequence then attends to its own prefix only."""
        if seg is None:
            length = tokens.shape[1]
            bias = mask_to_bias(ops.logical_and(padding_mask(tokens, self.pad_id), causal_mask(length)))
        else:
            bias = mask_to_bias(segment_mask(seg, seg, causal=True))
        x = self.positions(self.embed(tokens) * self.embed_scale, pos)
        for layer in self.layers:
            x = layer(x, bias)
        if self.cfg.pre_norm:
            x = self.final_norm(x)
        return x

    def construct(self, tokens, seg=None, pos=None):
        """tokens [B, L] -> logits [B, L, V] (position t predicts token t + 1)."""
        return self.project(self.states(tokens, seg, pos))

    # -- incremental decoding -------------------------------------------------------
    def start_decoding(self, batch: int, max_len: int):
        """Empty key/value caches: two tuples over blocks of [B, H, max_len, dk] zeros."""
        heads = self.cfg.n_heads
        shape = (batch, heads, max_len, self.cfg.d_model // heads)
        dtype = self.embed.embedding_table.dtype
        return tuple(tuple(ops.zeros(shape, dtype) for _ in self.layers) for _ in ("keys", "values"))

    def decode_step(self, token, position, self_k, self_v):
        """token [B, 1] at integer `position` [] -> log-probabilities of the next token [B, V] and the
        updated caches. A prompt is fed the same way, one token a step (its outputs ignored)."""
        write, bias = cache_slots(position, self_k[0].shape[2], self_k[0].dtype)
        x = self.positions.at(self.embed(token) * self.embed_scale, position)
        new_k, new_v = (), ()
        for i, layer in enumerate(self.layers):
            x, k, v = layer.step(x, write, self_k[i], self_v[i], bias)
            new_k += (k,)
            new_v += (v,)
        if self.cfg.pre_norm:
            x = self.final_norm(x)
        logits = self.project(x).reshape(x.shape[0], self.vocab)
        return ops.log_softmax(logits.astype(ms.float32), -1), new_k, new_v
