"""Model hyper-parameters: one typed, frozen dataclass, validated by the trainer's config loader."""
from dataclasses import dataclass


ARCHITECTURES = ("encoder_decoder", "decoder_only")  # built by model/api.py
FFNS = ("relu", "swiglu")  # model/feedforward.py
POSITIONS = ("sinusoidal", "learned", "rotary")  # model/positional.py (rotary: model/rotary.py, decoder-only)
NORMS = ("layernorm", "rmsnorm")  # model/norm.py
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
    norm: str = "layernorm"  # layernorm (gamma, beta) | rmsnorm (gamma only: Llama, T5)
    rope_theta: float = 10000.0  # rotary positions' base (positions: rotary)
    n_kv_heads: int = 0  # key/value heads: 0 = n_heads (multi-head), 1 = multi-query, else grouped-query
    bias: bool = True  # biases in the attention projections and the FFN (Llama: false)
    scale_embeddings: bool = True  # embeddings times sqrt(d_model) (the paper); Llama: false

    @property
    def kv_heads(self) -> int:
        """The number of key/value heads (n_kv_heads, 0 meaning n_heads)."""
        return self.n_kv_heads or self.n_heads

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def validate(self) -> None:
        """Raise ValueError naming the field when a size is impossible."""
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"model.arch must be one of {', '.join(ARCHITECTURES)}, got {self.arch!r}")
        for name, allowed in (("ffn", FFNS), ("positions", POSITIONS), ("recompute", RECOMPUTE), ("norm", NORMS)):
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
        if self.n_kv_heads < 0 or self.n_heads % self.kv_heads:
            raise ValueError(f"model.n_kv_heads ({self.n_kv_heads}) must divide model.n_heads ({self.n_heads}) "
                             f"(0 = n_heads, 1 = multi-query); try n_kv_heads="
                             f"{_divisor_near(self.n_heads, max(self.n_kv_heads, 1))}")
        if self.positions == "rotary":
            if self.arch != "decoder_only":
                raise ValueError("model.positions=rotary is wired for model.arch=decoder_only only; use sinusoidal "
                                 "or learned positions for the encoder-decoder")
            if self.head_dim % 2:
                raise ValueError(f"model.positions=rotary needs an even head size, but d_model / n_heads = "
                                 f"{self.head_dim}")
            if not self.rope_theta > 0:
                raise ValueError(f"model.rope_theta must be > 0, got {self.rope_theta}")
        for name in ("dropout", "attention_dropout", "activation_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"model.{name} must be in [0, 1), got {getattr(self, name)}")


def _divisor_near(n: int, k: int) -> int:
    return min((d for d in range(1, n + 1) if n % d == 0), key=lambda d: abs(d - k))
