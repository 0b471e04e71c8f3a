"""The one build path: a resolved config and plan -> model, layout, optimizer and train step.

    build_model(cfg, vocab sizes, backend)     the Transformer, with the CPU speed-ups on the CPU
    build_training(cfg, ctx, vocab sizes)      model -> parallelize (the seam) -> Adam -> assemble_step
    assemble_step(model, optimizer, ...)       loss, GradStep, GradNorm, UpdateStep -> TrainStep

Every caller that trains (the loop, the benchmarks, the tests) builds through here, so the
plan, the backend and the kernel directory are each decided once, by the caller's context.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import mindspore as ms
from mindspore import nn

from model import Transformer
from model.loss import LabelSmoothedCrossEntropy
from model.tokens import PAD
from trainer import cpu
from trainer.config import RunConfig
from trainer.data.multi30k import cache_root
from trainer.parallel.context import ParallelContext
from trainer.parallelize import Parallelized, parallelize
from trainer.step import GradNorm, GradStep, TeacherForcedLoss, TrainStep, UpdateStep


def cpu_speedups(cfg: RunConfig, backend: str):
    """The CPU speed-ups `cfg.train.cpu_*` asks for on `backend` (None off the CPU)."""
    t = cfg.train
    return cpu.CpuSpeedups.choose(backend, t.cpu_backward, t.cpu_kernels, t.fused_loss,
                                  Path(cache_root(cfg.data.cache_dir)))


def build_model(cfg: RunConfig, src_vocab_size: int, tgt_vocab_size: int, backend: str) -> Transformer:
    """The Transformer `cfg.model` describes, with the CPU speed-ups applied on the CPU."""
    return _model(cfg, src_vocab_size, tgt_vocab_size, cpu_speedups(cfg, backend))


def _model(cfg: RunConfig, src_vocab_size: int, tgt_vocab_size: int,
           speedups: Optional[cpu.CpuSpeedups]) -> Transformer:
    return cpu.accelerate(Transformer(cfg.model, src_vocab_size, tgt_vocab_size, pad_id=PAD), speedups)


@dataclass
class Built:
    """Everything one rank trains with."""

    model: Transformer
    parallel: Parallelized
    optimizer: nn.Optimizer
    step: nn.Cell  # TrainStep (wrapped by the seam under semi_auto)


def build_training(cfg: RunConfig, ctx: ParallelContext, src_vocab_size: int, tgt_vocab_size: int) -> Built:
    """Model, parallel layout, Adam (learning rate a Parameter set every step) and the train step."""
    speedups = cpu_speedups(cfg, ctx.backend)
    model = _model(cfg, src_vocab_size, tgt_vocab_size, speedups)  # same init on every rank
    parallel = parallelize(model, ctx)
    opt = cfg.optim
    optimizer = nn.Adam(model.trainable_params(), learning_rate=ms.Tensor(0.0, ms.float32),
                        beta1=opt.beta1, beta2=opt.beta2, eps=opt.eps, weight_decay=opt.weight_decay)
    step = assemble_step(model, optimizer, opt.label_smoothing, opt.clip_norm, parallel, speedups)
    return Built(model, parallel, optimizer, parallel.wrap(step))


def assemble_step(model: nn.Cell, optimizer: nn.Optimizer, smoothing: float, clip_norm: float,
                  parallel: Parallelized = Parallelized("standalone"),
                  speedups: Optional[cpu.CpuSpeedups] = None) -> TrainStep:
    """The train step of an already parallelized model: loss (CPU-fused where it may), gradients,
    the seam's reductions and norm weighting, clipping, the optimizer. In training mode."""
    weights = optimizer.parameters
    loss_fn = cpu.fused_loss(model, smoothing, PAD, speedups, parallel.splits_projection)
    if loss_fn is None:
        criterion = cpu.criterion(smoothing, PAD, speedups) or LabelSmoothedCrossEntropy(smoothing, PAD)
        loss_fn = TeacherForcedLoss(model, criterion)
    grad_step = GradStep(loss_fn, weights, PAD, parallel.token_sum())
    kernel = cpu.sum_of_squares_kernel(speedups, weights, split=bool(parallel.shard_axis))
    norm = GradNorm(parallel.norm_weights(weights), parallel.mp_sum(), kernel)
    step = TrainStep(grad_step, UpdateStep(optimizer, clip_norm, parallel.reduction(weights), norm))
    step.set_train(True)
    return step
