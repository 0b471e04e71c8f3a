"""The encoder-decoder Transformer: embeddings, stacks, output projection, decoding step."""
import math

import mindspore as ms
from mindspore import nn, ops
from mindspore.common.initializer import Normal

from model.config import ModelConfig
from model.dropout import bind_dropout_key
from model.layers import DecoderLayer, EncoderLayer
from model.masks import cache_slots, causal_mask, mask_to_bias, padding_mask, segment_mask
from model.norm import make_norm
from model.positional import PositionalEncoding


class Logits(nn.Cell):
    """The output projection: decoder states [N, d] times the output weight [V, d] transposed.

    A Cell of its own so that a parallel layout can put its vocabulary-parallel version in
    its place (model/parallel/layout.py).
    """

    def __init__(self):
        super().__init__()
        self.matmul = ops.MatMul(transpose_b=True)

    def construct(self, x, weight):
        return self.matmul(x, weight)


class Transformer(nn.Cell):
    """Encoder-decoder Transformer; `construct` returns logits for teacher forcing.

    Vocabulary sizes are given separately; with `cfg.share_embeddings` they must be
    equal (a joint vocabulary) and one table serves source, target and output.
    """

    def __init__(self, cfg: ModelConfig, src_vocab: int, tgt_vocab: int, pad_id: int):
        super().__init__()
        cfg.validate()
        if cfg.share_embeddings and src_vocab != tgt_vocab:
            raise ValueError(
                f"model.share_embeddings needs a joint vocabulary, but source has {src_vocab} "
                f"entries and target {tgt_vocab}; set data.joint_vocab=true or model.share_embeddings=false")
        self.cfg = cfg
        self.pad_id = pad_id
        self.tgt_vocab = tgt_vocab
        self.embed_scale = math.sqrt(cfg.d_model) if cfg.scale_embeddings else 1.0
        init = Normal(cfg.d_model ** -0.5)
        self.src_embed = nn.Embedding(src_vocab, cfg.d_model, embedding_table=init)
        if cfg.share_embeddings:
            self.tgt_embed = self.src_embed
        else:
            self.tgt_embed = nn.Embedding(tgt_vocab, cfg.d_model, embedding_table=init)
            self.out_proj = nn.Dense(cfg.d_model, tgt_vocab, has_bias=False)
        self.positions = PositionalEncoding(cfg.d_model, cfg.max_positions, cfg.dropout, cfg.positions)
        self.tgt_positions = PositionalEncoding(cfg.d_model, cfg.max_positions, cfg.dropout, cfg.positions)  # masks of its own
        self.encoder = nn.CellList([EncoderLayer(cfg) for _ in range(cfg.encoder_layers)])
        self.decoder = nn.CellList([DecoderLayer(cfg) for _ in range(cfg.decoder_layers)])
        if cfg.pre_norm:  # pre-LN stacks end with a LayerNorm of their own
            self.encoder_norm = make_norm(cfg.norm, cfg.d_model, cfg.layer_norm_eps)
            self.decoder_norm = make_norm(cfg.norm, cfg.d_model, cfg.layer_norm_eps)
        self.logits = Logits()
        self.dropout_key = bind_dropout_key(self)  # the train step sets it per call (model/dropout.py)

    # -- pieces -------------------------------------------------------------------
    def encode(self, src, src_seg=None, src_pos=None):
        """src [B, Ls] ids -> memory [B, Ls, d], src_bias [B, 1, 1, Ls].

        Packed rows (several sentences a row) also give segment ids and positions,
        src_seg and src_pos [B, Ls]; src_bias is then [B, 1, Ls, Ls].
        """
        if src_seg is None:
            src_bias = mask_to_bias(padding_mask(src, self.pad_id))
        else:
            src_bias = mask_to_bias(segment_mask(src_seg, src_seg))
        x = self.positions(self.src_embed(src) * self.embed_scale, src_pos)
        for layer in self.encoder:
            x = layer(x, src_bias)
        if self.cfg.pre_norm:
            x = self.encoder_norm(x)
        return x, src_bias

    def output_weight(self):
        """The output projection's weight [V, d]: the shared embedding table or out_proj's."""
        return self.tgt_embed.embedding_table if self.cfg.share_embeddings else self.out_proj.weight

    def project(self, x):
        """Decoder states [B, L, d] -> logits [B, L, V]."""
        b, length, d = x.shape
        return self.logits(x.reshape(b * length, d), self.output_weight()).reshape(b, length, self.tgt_vocab)

    def decode(self, tgt_in, memory, src_bias, src_seg=None, tgt_seg=None, tgt_pos=None):
        """Teacher-forced decoder: tgt_in [B, Lt] -> logits [B, Lt, V].

        For packed rows, src_seg/tgt_seg are the segment ids and tgt_pos the positions:
        each target sentence attends to its own prefix and to its own source sentence only.
        """
        return self.project(self.decode_states(tgt_in, memory, src_bias, src_seg, tgt_seg, tgt_pos))

    def decode_states(self, tgt_in, memory, src_bias, src_seg=None, tgt_seg=None, tgt_pos=None):
        """`decode` up to the output projection: the decoder's final states [B, Lt, d]."""
        if tgt_seg is None:
            length = tgt_in.shape[1]
            tgt_bias = mask_to_bias(ops.logical_and(padding_mask(tgt_in, self.pad_id), causal_mask(length)))
            cross_bias = src_bias
        else:
            tgt_bias = mask_to_bias(segment_mask(tgt_seg, tgt_seg, causal=True))
            cross_bias = mask_to_bias(segment_mask(tgt_seg, src_seg))
        x = self.tgt_positions(self.tgt_embed(tgt_in) * self.embed_scale, tgt_pos)
        for layer in self.decoder:
            x = layer(x, memory, tgt_bias, cross_bias)
        if self.cfg.pre_norm:
            x = self.decoder_norm(x)
        return x

    def target_states(self, src, tgt_in, src_seg=None, tgt_seg=None, src_pos=None, tgt_pos=None):
        """Encode, then decode up to the output projection: the decoder's final states [B, Lt, d]."""
        memory, src_bias = self.encode(src, src_seg, src_pos)
        return self.decode_states(tgt_in, memory, src_bias, src_seg, tgt_seg, tgt_pos)

    def construct(self, src, tgt_in, src_seg=None, tgt_seg=None, src_pos=None, tgt_pos=None):
        """src [B, Ls], tgt_in [B, Lt] -> logits [B, Lt, V]; the rest only for packed rows (see `encode`)."""
        memory, src_bias = self.encode(src, src_seg, src_pos)
        return self.decode(tgt_in, memory, src_bias, src_seg, tgt_seg, tgt_pos)

    # -- incremental decoding -------------------------------------------------------
    def max_target_positions(self, src_len: int) -> int:
        """How many target positions decoding may use after a source of `src_len` ids: all of them."""
        return self.cfg.max_positions

    # Caches are tuples with one tensor per decoder layer: slicing a stacked tensor
    # (StridedSlice) was 75% of a decoding step on CPU.
    def start_decoding(self, src, max_len: int):
        """Encode once and build the caches for `decode_step`.

        Returns (src_bias, cross_k, cross_v, self_k, self_v); each cache is a tuple over
        decoder layers of [B, H, Ls, dk] (cross) or [B, H, max_len, dk] zeros (self).
        """
        memory, src_bias = self.encode(src)
        cross_k, cross_v, self_k, self_v = (), (), (), ()
        for layer in self.decoder:
            k, v = layer.cross_attn.project_kv(memory)
            b, h, _, dk = k.shape
            cross_k += (k,)
            cross_v += (v,)
            self_k += (ops.zeros((b, h, max_len, dk), k.dtype),)
            self_v += (ops.zeros((b, h, max_len, dk), k.dtype),)
        return src_bias, cross_k, cross_v, self_k, self_v

    def decode_step(self, token, position, src_bias, cross_k, cross_v, self_k, self_v):
        """Log-probabilities of the next token given the previous one.

        token [B, 1] ids at integer `position` []; caches as from `start_decoding`.
        Returns log-probabilities [B, V] and the updated self-attention caches.
        """
        write, self_bias = cache_slots(position, self_k[0].shape[2], self_k[0].dtype)
        x = self.tgt_positions.at(self.tgt_embed(token) * self.embed_scale, position)
        new_k, new_v = (), ()
        for i, layer in enumerate(self.decoder):
            x, k, v = layer.step(x, write, self_k[i], self_v[i], self_bias, cross_k[i], cross_v[i], src_bias)
            new_k += (k,)
            new_v += (v,)
        if self.cfg.pre_norm:
            x = self.decoder_norm(x)
        logits = self.project(x).reshape(x.shape[0], self.tgt_vocab)  # [B, V]
        return ops.log_softmax(logits.astype(ms.float32), -1), new_k, new_v  # float32 under mixed precision
