"""The decoder-only (GPT-style) Transformer, built from the encoder-decoder's blocks.

One stack of self-attention + FFN blocks (model/layers.py EncoderLayer) under a causal bias,
embeddings tied to the output projection (or an untied `out_proj`, model.share_embeddings=false),
sinusoidal, learned or rotary positions (`model.positions`), pre-LN in recipes (`model.pre_norm`), with a
final norm then. With rmsnorm, rotary positions, SwiGLU, no biases, unscaled embeddings and an untied output
it is Llama's architecture (recipes llama_tiny, llama2_7b; tests/test_llama.py checks its logits against
`transformers`' LlamaForCausalLM). The same parallel layout table applies
(model/parallel/layout.py: attention and FFN by their generic paths, `embed` by vocabulary rows,
`logits` vocabulary-parallel).

Translation is conditional generation: the sequence is the source sentence (its ids end with EOS),
then the target sentence started by BOS, the separator:  de ... EOS BOS en ... -> en ... EOS. The
trainer hands the model the same (src, tgt_in) batches it gives the encoder-decoder (model/api.py);
this model reads them as one causal sequence, the source block first, and returns logits for the
target positions only, so the loss is on the English part alone. Target positions continue the
source's (position len(src) + j), in padded and in packed rows, so a batch's padding never moves a
token's position. Decoding fills a key/value cache with the source in one pass (the prompt) and
then generates one token a step against the prompt's and the generated tokens' caches.
"""
import math

import mindspore as ms
from mindspore import nn, ops
from mindspore.common.initializer import Normal

from model.config import ModelConfig
from model.dropout import bind_dropout_key
from model.layers import EncoderLayer
from model.masks import cache_slots, causal_mask, mask_to_bias, padding_mask, segment_mask
from model.norm import make_norm
from model.positional import PositionalEncoding
from model.rotary import Rotary
from model.transformer import Logits


def _counting(tokens):
    """Positions 0, 1, ... of every row of tokens [B, L] (int32 [B, L])."""
    return ops.broadcast_to(ops.arange(tokens.shape[1]).reshape(1, -1).astype(ms.int32), tokens.shape)


class DecoderOnly(nn.Cell):
    """Causal language model over one vocabulary, used for translation as prompt + continuation.

    Its depth is `cfg.decoder_layers`; `cfg.encoder_layers` is not used. `lm_logits` is the plain
    language model (tokens -> next-token logits); `construct` the translation view (model/api.py).
    """

    def __init__(self, cfg: ModelConfig, vocab: int, pad_id: int):
        super().__init__()
        cfg.validate()
        self.cfg, self.vocab, self.pad_id = cfg, vocab, pad_id
        self.tgt_vocab = vocab  # what search and the trainer read (model/api.py)
        self.embed_scale = math.sqrt(cfg.d_model) if cfg.scale_embeddings else 1.0
        self.embed = nn.Embedding(vocab, cfg.d_model, embedding_table=Normal(cfg.d_model ** -0.5))
        self.positions = PositionalEncoding(cfg.d_model, cfg.max_positions, cfg.dropout, cfg.positions)
        self.rotary = (Rotary(cfg.head_dim, cfg.max_positions, cfg.rope_theta) if cfg.positions == "rotary"
                       else None)
        self.layers = nn.CellList([EncoderLayer(cfg) for _ in range(cfg.decoder_layers)])
        if cfg.pre_norm:
            self.final_norm = make_norm(cfg.norm, cfg.d_model, cfg.layer_norm_eps)
        if not cfg.share_embeddings:
            self.out_proj = nn.Dense(cfg.d_model, vocab, has_bias=False)
        self.logits = Logits()
        self.dropout_key = bind_dropout_key(self)

    @classmethod
    def for_translation(cls, cfg: ModelConfig, src_vocab: int, tgt_vocab: int, pad_id: int) -> "DecoderOnly":
        """The model for a source and a target vocabulary: they must be one (a joint vocabulary)."""
        if src_vocab != tgt_vocab:
            raise ValueError(f"model.arch=decoder_only reads source and target with one embedding, but the source "
                             f"vocabulary has {src_vocab} entries and the target {tgt_vocab}; set data.joint_vocab=true")
        return cls(cfg, tgt_vocab, pad_id)

    def output_weight(self):
        """The output projection's weight [V, d]: the embedding table (tied) or out_proj's."""
        return self.embed.embedding_table if self.cfg.share_embeddings else self.out_proj.weight

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
        rope = None
        if self.rotary is not None:
            if pos is None:
                pos = _counting(tokens)
            rope = self.rotary(pos)
        for layer in self.layers:
            x = layer(x, bias, rope)
        if self.cfg.pre_norm:
            x = self.final_norm(x)
        return x

    def lm_logits(self, tokens, seg=None, pos=None):
        """The language model: tokens [B, L] -> logits [B, L, V] (position t predicts token t + 1)."""
        return self.project(self.states(tokens, seg, pos))

    # -- translation as conditional generation (model/api.py) ----------------------
    def target_states(self, src, tgt_in, src_seg=None, tgt_seg=None, src_pos=None, tgt_pos=None):
        """The final states [B, Lt, d] of the target positions of the sequence source + target.

        Padded rows: src [B, Ls] (padding at the end), tgt_in [B, Lt] starting with BOS. Packed rows
        also give segment ids and positions of both blocks; sentence s's target attends to sentence
        s's source and its own prefix only.
        """
        src_len = src.shape[1]
        tokens = ops.concat((src, tgt_in), 1)
        if src_seg is None:
            lengths = ops.not_equal(src, self.pad_id).astype(ms.int32).sum(1, keepdims=True)  # [B, 1]
            src_pos = _counting(src)
            tgt_pos = (lengths + ops.arange(tgt_in.shape[1]).reshape(1, -1)).astype(ms.int32)
            pos = ops.concat((src_pos, tgt_pos), 1)
            states = self.states(tokens, None, pos)
        else:
            # each target token's sentence's source length: its source tokens in the row
            same = ops.logical_and(ops.equal(tgt_seg.expand_dims(2), src_seg.expand_dims(1)),
                                   ops.not_equal(src_seg, 0).expand_dims(1))  # [B, Lt, Ls]
            pos = ops.concat((src_pos.astype(ms.int32), (tgt_pos + same.astype(ms.int32).sum(2)).astype(ms.int32)), 1)
            states = self.states(tokens, ops.concat((src_seg, tgt_seg), 1), pos)
        return states[:, src_len:]

    def construct(self, src, tgt_in, src_seg=None, tgt_seg=None, src_pos=None, tgt_pos=None):
        """src [B, Ls], tgt_in [B, Lt] -> logits [B, Lt, V] of the target positions (see `target_states`)."""
        return self.project(self.target_states(src, tgt_in, src_seg, tgt_seg, src_pos, tgt_pos))

    # -- incremental decoding (the state model/search.py carries) ------------------
    def max_target_positions(self, src_len: int) -> int:
        """How many target positions decoding may use after a source (prompt) of `src_len` ids."""
        return self.cfg.max_positions - src_len

    def start_decoding(self, src, max_len: int):
        """Run the source (the prompt) once and keep its keys and values.

        Returns (prompt_bias [B, 1, 1, Ls], prompt_k, prompt_v, self_k, self_v): per-block tuples of
        the prompt's [B, Hkv, Ls, dk] and of [B, Hkv, max_len, dk] zeros for the generated tokens.
        """
        keep = padding_mask(src, self.pad_id)
        bias = mask_to_bias(ops.logical_and(keep, causal_mask(src.shape[1])))
        x = self.positions(self.embed(src) * self.embed_scale)
        rope = None
        if self.rotary is not None:
            rope = self.rotary(_counting(src))
        prompt_k, prompt_v, self_k, self_v = (), (), (), ()
        for layer in self.layers:
            x, k, v = layer.with_kv(x, bias, rope)
            b, h, _, dk = k.shape
            prompt_k += (k,)
            prompt_v += (v,)
            self_k += (ops.zeros((b, h, max_len, dk), k.dtype),)
            self_v += (ops.zeros((b, h, max_len, dk), k.dtype),)
        return mask_to_bias(keep), prompt_k, prompt_v, self_k, self_v

    def decode_step(self, token, position, prompt_bias, prompt_k, prompt_v, self_k, self_v):
        """token [B, 1] at target position `position` [] (0 = the BOS) -> log-probabilities of the next token
        [B, V] and the updated caches. Its sequence position is the row's source length + `position`."""
        write, self_bias = cache_slots(position, self_k[0].shape[2], self_k[0].dtype)
        lengths = ops.equal(prompt_bias, 0).astype(ms.int32).sum(-1).reshape(-1)  # [B] source lengths
        rows = (lengths + position).astype(ms.int32)
        x = self.positions.at_rows(self.embed(token) * self.embed_scale, rows)
        rope = None if self.rotary is None else self.rotary.at_rows(rows)
        new_k, new_v = (), ()
        for i, layer in enumerate(self.layers):
            x, k, v = layer.step(x, write, self_k[i], self_v[i], self_bias, prompt_k[i], prompt_v[i], prompt_bias,
                                 rope)
            new_k += (k,)
            new_v += (v,)
        if self.cfg.pre_norm:
            x = self.final_norm(x)
        logits = self.project(x).reshape(x.shape[0], self.vocab)
        return ops.log_softmax(logits.astype(ms.float32), -1), new_k, new_v
