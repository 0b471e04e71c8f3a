"""Parameter counts from a config alone (no tensors allocated): what the planner sizes memory with.

Tested equal to the built models' trainable parameters (tests/test_decoder_only.py, tests/test_planner.py).
"""
from model.config import ModelConfig


def _attention(d: int) -> int:
    return 4 * (d * d + d)  # Q, K, V, output projections with biases


def _ffn(d: int, ff: int, kind: str = "relu") -> int:
    gates = 2 if kind == "swiglu" else 1  # SwiGLU: a gate and a value projection in, one out
    return gates * (d * ff + ff) + ff * d + d


def _positions(cfg: ModelConfig, arch: str) -> int:
    """A learned position table per stack that embeds (the encoder-decoder: two); sinusoids are not trained."""
    if cfg.positions != "learned":
        return 0
    return (1 if arch == "decoder_only" else 2) * cfg.max_positions * cfg.d_model


def _norm(d: int) -> int:
    return 2 * d


def _stacks(cfg: ModelConfig, arch: str):
    """((layers, attention sublayers a layer) per stack, final LayerNorms under pre-LN) of architecture `arch`."""
    if arch == "decoder_only":
        return [(cfg.decoder_layers, 1)], 1
    return [(cfg.encoder_layers, 1), (cfg.decoder_layers, 2)], 2  # decoder layers: self- and cross-attention


def _layers_parameters(cfg: ModelConfig, arch: str) -> int:
    d, (stacks, finals) = cfg.d_model, _stacks(cfg, arch)
    per_stack = sum(n * (a * _attention(d) + _ffn(d, cfg.d_ff, cfg.ffn) + (a + 1) * _norm(d)) for n, a in stacks)
    return per_stack + (finals * _norm(d) if cfg.pre_norm else 0) + _positions(cfg, arch)


def encoder_decoder_parameters(cfg: ModelConfig, src_vocab: int, tgt_vocab: int) -> int:
    """Trainable parameters of model.Transformer for these vocabulary sizes."""
    d = cfg.d_model
    embeddings = src_vocab * d + (0 if cfg.share_embeddings else 2 * tgt_vocab * d)  # + untied output weight
    return embeddings + _layers_parameters(cfg, "encoder_decoder")


def decoder_only_parameters(cfg: ModelConfig, vocab: int) -> int:
    """Trainable parameters of model.decoder_only.DecoderOnly (tied embeddings)."""
    return vocab * cfg.d_model + _layers_parameters(cfg, "decoder_only")


def parameter_count(cfg: ModelConfig, src_vocab: int, tgt_vocab: int) -> int:
    """Trainable parameters of the model `cfg.arch` names (decoder-only: one vocabulary, src_vocab)."""
    if cfg.arch == "decoder_only":
        return decoder_only_parameters(cfg, src_vocab)
    return encoder_decoder_parameters(cfg, src_vocab, tgt_vocab)


def replicated_parameters(cfg: ModelConfig) -> int:
    """Parameters every model-parallel rank holds whole: LayerNorms, the row-parallel layers' biases
    (attention output, FFN second layer) and learned position tables; everything else is split
    (model/parallel/layout.py)."""
    d, (stacks, finals) = cfg.d_model, _stacks(cfg, cfg.arch)
    per_stack = sum(n * (a + 1) * (_norm(d) + d) for n, a in stacks)  # a norm and a row bias per sublayer
    return per_stack + (finals * _norm(d) if cfg.pre_norm else 0) + _positions(cfg, cfg.arch)
