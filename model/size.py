"""Parameter counts from a config alone (no tensors allocated): what the planner sizes memory with.

Tested equal to the built models' trainable parameters (tests/test_decoder_only.py).
"""
from model.config import ModelConfig


def _attention(d: int) -> int:
    return 4 * (d * d + d)  # Q, K, V, output projections with biases


def _ffn(d: int, ff: int) -> int:
    return d * ff + ff + ff * d + d


def _norm(d: int) -> int:
    return 2 * d


def encoder_decoder_parameters(cfg: ModelConfig, src_vocab: int, tgt_vocab: int) -> int:
    """Trainable parameters of model.Transformer for these vocabulary sizes."""
    d = cfg.d_model
    embeddings = src_vocab * d + (0 if cfg.share_embeddings else 2 * tgt_vocab * d)  # + untied output weight
    encoder = cfg.encoder_layers * (_attention(d) + _ffn(d, cfg.d_ff) + 2 * _norm(d))
    decoder = cfg.decoder_layers * (2 * _attention(d) + _ffn(d, cfg.d_ff) + 3 * _norm(d))
    final = 2 * _norm(d) if cfg.pre_norm else 0
    return embeddings + encoder + decoder + final


def decoder_only_parameters(cfg: ModelConfig, vocab: int) -> int:
    """Trainable parameters of model.decoder_only.DecoderOnly (tied embeddings)."""
    d = cfg.d_model
    blocks = cfg.decoder_layers * (_attention(d) + _ffn(d, cfg.d_ff) + 2 * _norm(d))
    return vocab * d + blocks + (_norm(d) if cfg.pre_norm else 0)


def parameter_count(cfg: ModelConfig, src_vocab: int, tgt_vocab: int) -> int:
    """Trainable parameters of the model `cfg.arch` names (decoder-only: one vocabulary, src_vocab)."""
    if cfg.arch == "decoder_only":
        return decoder_only_parameters(cfg, src_vocab)
    return encoder_decoder_parameters(cfg, src_vocab, tgt_vocab)


def replicated_parameters(cfg: ModelConfig) -> int:
    """Parameters every model-parallel rank holds whole: LayerNorms and the row-parallel layers' biases
    (attention output, FFN second layer); everything else is split (model/parallel/layout.py)."""
    d = cfg.d_model
    if cfg.arch == "decoder_only":
        per_layer = cfg.decoder_layers * (2 * _norm(d) + 2 * d)
        return per_layer + (_norm(d) if cfg.pre_norm else 0)
    encoder = cfg.encoder_layers * (2 * _norm(d) + 2 * d)
    decoder = cfg.decoder_layers * (3 * _norm(d) + 3 * d)
    return encoder + decoder + (2 * _norm(d) if cfg.pre_norm else 0)
