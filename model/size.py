"""Parameter counts from a config alone (no tensors allocated): what the planner sizes memory with.

Tested equal to the built models' trainable parameters (tests/test_decoder_only.py, tests/test_planner.py,
tests/test_llama.py).
"""
from model.config import ModelConfig


def _attention(cfg: ModelConfig) -> int:
    """Q and output projections d x d, K and V d x (n_kv_heads * head_dim), biases when model.bias."""
    d, kv = cfg.d_model, cfg.kv_heads * cfg.head_dim
    return 2 * d * d + 2 * d * kv + (2 * d + 2 * kv if cfg.bias else 0)


def _ffn(cfg: ModelConfig) -> int:
    d, ff = cfg.d_model, cfg.d_ff
    gates = 2 if cfg.ffn == "swiglu" else 1  # SwiGLU: a gate and a value projection in, one out
    return gates * d * ff + ff * d + ((gates * ff + d) if cfg.bias else 0)


def _positions(cfg: ModelConfig, arch: str) -> int:
    """A learned position table per stack that embeds (the encoder-decoder: two); sinusoids and rotary
    tables are not trained."""
    if cfg.positions != "learned":
        return 0
    return (1 if arch == "decoder_only" else 2) * cfg.max_positions * cfg.d_model


def _norm(cfg: ModelConfig) -> int:
    return cfg.d_model * (1 if cfg.norm == "rmsnorm" else 2)  # RMSNorm has no beta


def _stacks(cfg: ModelConfig, arch: str):
    """((layers, attention sublayers a layer) per stack, final norms under pre-LN) of architecture `arch`."""
    if arch == "decoder_only":
        return [(cfg.decoder_layers, 1)], 1
    return [(cfg.encoder_layers, 1), (cfg.decoder_layers, 2)], 2  # decoder layers: self- and cross-attention


def _layers_parameters(cfg: ModelConfig, arch: str) -> int:
    stacks, finals = _stacks(cfg, arch)
    per_stack = sum(n * (a * _attention(cfg) + _ffn(cfg) + (a + 1) * _norm(cfg)) for n, a in stacks)
    return per_stack + (finals * _norm(cfg) if cfg.pre_norm else 0) + _positions(cfg, arch)


def encoder_decoder_parameters(cfg: ModelConfig, src_vocab: int, tgt_vocab: int) -> int:
    """Trainable parameters of model.Transformer for these vocabulary sizes."""
    d = cfg.d_model
    embeddings = src_vocab * d + (0 if cfg.share_embeddings else 2 * tgt_vocab * d)  # + untied output weight
    return embeddings + _layers_parameters(cfg, "encoder_decoder")


def decoder_only_parameters(cfg: ModelConfig, vocab: int) -> int:
    """Trainable parameters of model.decoder_only.DecoderOnly (tied embeddings, or an untied output layer)."""
    return vocab * cfg.d_model * (1 if cfg.share_embeddings else 2) + _layers_parameters(cfg, "decoder_only")


def parameter_count(cfg: ModelConfig, src_vocab: int, tgt_vocab: int) -> int:
    """Trainable parameters of the model `cfg.arch` names (decoder-only: one vocabulary, src_vocab)."""
    if cfg.arch == "decoder_only":
        return decoder_only_parameters(cfg, src_vocab)
    return encoder_decoder_parameters(cfg, src_vocab, tgt_vocab)


def replicated_parameters(cfg: ModelConfig) -> int:
    """Parameters every model-parallel rank holds whole: norms, the row-parallel layers' biases
    (attention output, FFN second layer) and learned position tables; everything else is split
    (model/parallel/layout.py)."""
    stacks, finals = _stacks(cfg, cfg.arch)
    row_bias = cfg.d_model if cfg.bias else 0
    per_stack = sum(n * (a + 1) * (_norm(cfg) + row_bias) for n, a in stacks)  # a norm and a row bias per sublayer
    return per_stack + (finals * _norm(cfg) if cfg.pre_norm else 0) + _positions(cfg, cfg.arch)
