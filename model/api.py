"""What a model provides to the trainer, and the table of architectures `model.arch` names.

Every architecture trains and translates through the same batches, seam and search:

    construct(src, tgt_in, src_seg=None, tgt_seg=None, src_pos=None, tgt_pos=None) -> logits [B, Lt, V]
        teacher forcing on padded (src [B, Ls], tgt_in [B, Lt]) or packed rows (segment ids, positions)
    target_states(same inputs) -> [B, Lt, d]     the states the output projection reads (the CPU's fused
                                                 projection + loss, trainer/cpu/loss.py, starts here)
    output_weight() -> [V, d]                    the projection's weight (tied or not)
    logits                                       a `Logits` Cell: the layout swaps in a vocabulary-parallel one
    start_decoding(src, max_len) -> (bias, fixed_k, fixed_v, self_k, self_v)
    decode_step(token, position, bias, fixed_k, fixed_v, self_k, self_v) -> (log-probs [B, V], self_k, self_v)
        incremental decoding (model/search.py): fixed_k/v are per-layer tuples the sentence fixes (the
        encoder-decoder's projected memory, the decoder-only model's prompt), self_k/v the generated tokens'
    max_target_positions(src_len) -> int         how long an output may grow after a source of src_len ids
    cfg (ModelConfig), tgt_vocab (int), dropout_key (model/dropout.py's bind_dropout_key)

and its sublayers' attribute paths match model/parallel/layout.py's table (`*_attn.w_q`, `*.ffn.w1`,
`*embed`, `logits`), which is what makes data, tensor and semi_auto parallelism apply unchanged. A third
architecture is one file implementing this, an entry in ARCHITECTURES and a recipe.
"""
from typing import Callable, Dict

from mindspore import nn

from model.config import ModelConfig
from model.decoder_only import DecoderOnly
from model.transformer import Transformer

# model.arch -> (config, source vocabulary size, target vocabulary size, pad id) -> model
ARCHITECTURES: Dict[str, Callable[[ModelConfig, int, int, int], nn.Cell]] = {
    "encoder_decoder": Transformer,
    "decoder_only": DecoderOnly.for_translation,
}


def build(cfg: ModelConfig, src_vocab: int, tgt_vocab: int, pad_id: int) -> nn.Cell:
    """The model `cfg.arch` names, for these vocabulary sizes."""
    cfg.validate()
    return ARCHITECTURES[cfg.arch](cfg, src_vocab, tgt_vocab, pad_id)
