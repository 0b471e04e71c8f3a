"""A run directory holds everything needed to use its checkpoints: config, vocabulary, weights.

    <run>/config.yaml          the full, validated configuration
    <run>/vocab/               tokenizer files (copied from the cache)
    <run>/checkpoints/step_<N>/   sharded checkpoints (trainer/ckpt); best, latest, last point at them
    <run>/metrics.jsonl, <run>/tb/   logs
"""
from pathlib import Path
from typing import Tuple

import yaml

from mindspore import nn

from trainer.build import build_model
from trainer.ckpt.store import resolve
from trainer.ckpt.tools import averaging_window, load_averaged_weights, load_weights
from trainer.config import RunConfig, config_from_dict
from trainer.data.tokenizer import load_vocabs
from trainer.parallel.context import select_backend


def run_dir_of(checkpoint_path: Path) -> Path:
    """<run>/checkpoints/step_<N> (or best, latest, <run>/checkpoints itself, <run> itself, or a merged
    <run>/checkpoints/x.ckpt) -> <run>; a clear error if the layout is not there."""
    checkpoint_path = Path(checkpoint_path)
    if not checkpoint_path.exists():
        raise FileNotFoundError(f"checkpoint not found: {checkpoint_path}")
    run = (checkpoint_path.resolve() if checkpoint_path.is_file() else resolve(checkpoint_path)).parent.parent
    if not (run / "config.yaml").is_file():
        raise FileNotFoundError(
            f"{checkpoint_path}: expected config.yaml in {run} (checkpoints live in <run>/checkpoints/)")
    return run


def run_config(checkpoint_path: Path) -> RunConfig:
    """The configuration of the run a checkpoint belongs to."""
    run = run_dir_of(checkpoint_path)
    return config_from_dict(yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8")))


def load_for_inference(checkpoint_path: Path, average: int = 1) -> Tuple[RunConfig, nn.Cell, object, object]:
    """(config, model with weights, source vocab, target vocab) from a checkpoint (step directory,
    pointer, checkpoints root, or merged .ckpt file); with `average` > 1, the mean weights of that
    checkpoint and the average - 1 kept before it."""
    run = run_dir_of(checkpoint_path)
    cfg = run_config(checkpoint_path)
    src_vocab, tgt_vocab = load_vocabs(run / "vocab")
    model = build_model(cfg, len(src_vocab), len(tgt_vocab), select_backend())
    if average > 1:
        load_averaged_weights(model, averaging_window(checkpoint_path, average))
    else:
        load_weights(model, checkpoint_path)
    model.set_train(False)
    return cfg, model, src_vocab, tgt_vocab


def load_language_model(checkpoint_path: Path):
    """(config, decoder-only model with weights, vocabulary or None) for `mindrun generate`: the vocabulary size
    comes from the checkpoint's embedding when the run has no vocab/ (an import without tokenizer.model)."""
    from trainer.ckpt import manifest as mf

    run = run_dir_of(checkpoint_path)
    cfg = run_config(checkpoint_path)
    if cfg.model.arch != "decoder_only":
        raise ValueError(f"{run}: model.arch is {cfg.model.arch}; generate runs decoder-only language models "
                         f"(use mindrun translate for the encoder-decoder)")
    try:
        vocab, _ = load_vocabs(run / "vocab")
        size = len(vocab)
    except FileNotFoundError:
        vocab = None
        step = resolve(checkpoint_path)
        size = mf.read(step)["tensors"]["embed.embedding_table"]["shape"][0]
    model = build_model(cfg, size, size, select_backend())
    load_weights(model, checkpoint_path)
    model.set_train(False)
    return cfg, model, vocab
