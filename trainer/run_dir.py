"""A run directory holds everything needed to use its checkpoints: config, vocabulary, weights.

    <run>/config.yaml          the full, validated configuration
    <run>/vocab/               tokenizer files (copied from the cache)
    <run>/checkpoints/best.ckpt, last.ckpt
    <run>/metrics.jsonl, <run>/tb/   logs
"""
from pathlib import Path
from typing import Optional, Tuple

import yaml

from model import Transformer
from model.cpu_backward import enabled_here, use_cpu_backward
from trainer import checkpoint
from trainer.config import RunConfig, config_from_dict
from trainer.data.multi30k import cache_root
from trainer.data.tokenizer import PAD, load_vocabs


def kernel_dir(cfg: RunConfig) -> Optional[Path]:
    """Where model/cpu_kernels' C++ kernels are compiled to: <cache>/kernels on the CPU, unless
    train.cpu_backward or train.cpu_kernels is false (then None: MindSpore's ops)."""
    if cfg.train.cpu_backward and cfg.train.cpu_kernels and enabled_here():
        return cache_root(cfg.data.cache_dir) / "kernels"
    return None


def build_model(cfg: RunConfig, src_vocab_size: int, tgt_vocab_size: int) -> Transformer:
    """The Transformer the config describes; on the CPU (unless train.cpu_backward=false) with the bias,
    LayerNorm and softmax backward written out, LayerNorm in C++ (unless train.cpu_kernels=false)."""
    model = Transformer(cfg.model, src_vocab_size, tgt_vocab_size, pad_id=PAD)
    if cfg.train.cpu_backward and enabled_here():
        use_cpu_backward(model, kernel_dir(cfg))
    return model


def run_dir_of(checkpoint_path: Path) -> Path:
    """<run>/checkpoints/x.ckpt -> <run>; a clear error if the layout is not there."""
    checkpoint_path = Path(checkpoint_path)
    if not checkpoint_path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {checkpoint_path}")
    run = checkpoint_path.resolve().parent.parent
    if not (run / "config.yaml").is_file():
        raise FileNotFoundError(
            f"{checkpoint_path}: expected config.yaml in {run} (checkpoints live in <run>/checkpoints/)")
    return run


def load_for_inference(checkpoint_path: Path) -> Tuple[RunConfig, Transformer, object, object]:
    """(config, model with weights, source vocab, target vocab) from a checkpoint file."""
    run = run_dir_of(checkpoint_path)
    cfg = config_from_dict(yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8")))
    src_vocab, tgt_vocab = load_vocabs(run / "vocab")
    model = build_model(cfg, len(src_vocab), len(tgt_vocab))
    checkpoint.load_into(model, checkpoint_path)
    model.set_train(False)
    return cfg, model, src_vocab, tgt_vocab
