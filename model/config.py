"""Model hyper-parameters: one typed, frozen dataclass, validated by the trainer's config loader."""
from dataclasses import dataclass


ARCHITECTURES = ("encoder_decoder", "decoder_only")  # built by model/api.py
FFNS = ("relu", "swiglu")  # model/feedforward.py
POSITIONS = ("sinusoidal", "learned")  # model/positional.py
RECOMPUTE = ("none", "full", "selective")  # model/recompute.py


@dataclass(frozen=True)
class ModelConfig:
    """Sizes and switches of the encoder-decoder Transformer."""

    arch: str = "encoder_decoder"  # encoder_decoder (model.Transformer) | decoder_only (model.decoder_only)
    encoder_layers: int = 3
    decoder_layers: int = 3
    d_model: int = 256
    n_heads: int = 4
    d_ff: int = 1024
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    pre_norm: bool = False  # False: post-LN as in the paper and the course
    share_embeddings: bool = True  # one table for source, target and output (joint vocab only)
    max_positions: int = 256  # rows of the position table; longer inputs are an error (decoder-only: both sides)
    layer_norm_eps: float = 1e-5
    ffn: str = "relu"  # relu: max(0, xW1)W2 (the paper) | swiglu: (silu(xW1) * xW3)W2 (PaLM, LLaMA)
    positions: str = "sinusoidal"  # sinusoidal (fixed table) | learned (a trained table per stack, GPT-2)
    recompute: str = "none"  # none | full (every block's activations rebuilt in the backward) | selective
    #                          (the attention core's only: scores, softmax, dropout, weighted sum)

    def validate(self) -> None:
        """Raise ValueError naming the field when a size is impossible."""
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"model.arch must be one of {', '.join(ARCHITECTURES)}, got {self.arch!r}")
        for name, allowed in (("ffn", FFNS), ("positions", POSITIONS), ("recompute", RECOMPUTE)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"model.{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        for name in ("encoder_layers", "decoder_layers", "d_model", "n_heads", "d_ff", "max_positions"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ValueError(
                f"model.d_model ({self.d_model}) must be divisible by model.n_heads ({self.n_heads}); "
                f"try n_heads={_divisor_near(self.d_model, self.n_heads)}")
        if self.d_model % 2:
            raise ValueError(f"model.d_model must be even for sinusoidal positions, got {self.d_model}")
        for name in ("dropout", "attention_dropout", "activation_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"model.{name} must be in [0, 1), got {getattr(self, name)}")


def _divisor_near(n: int, k: int) -> int:
    return min((d for d in range(1, n + 1) if n % d == 0), key=lambda d: abs(d - k))
