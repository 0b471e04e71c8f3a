"""The one build path: a resolved config and plan -> model, layout, optimizer and train step.

    build_model(cfg, vocab sizes, backend)     the model `model.arch` names (model/api.py), with the CPU
                                               speed-ups on the CPU
    build_training(cfg, ctx, vocab sizes)      model -> parallelize (the seam) -> Adam -> assemble_step
                                               (dropout masks by global row: model/dropout.py)
    assemble_step(model, optimizer, ...)       mixed precision, loss, GradStep, GradNorm, UpdateStep,
                                               accumulation -> Stepper (TrainStep [+ MicroStep])

Every caller that trains (the loop, the benchmarks, the tests) builds through here, so the
plan, the backend and the kernel directory are each decided once, by the caller's context.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import mindspore as ms
from mindspore import nn

from model import build
from model.dropout import shard_dropout
from model.loss import LabelSmoothedCrossEntropy
from model.parallel.layout import split_axes
from model.recompute import apply_recompute
from model.tokens import PAD
from trainer import cpu
from trainer.adam import Adam
from trainer.ckpt.layout import ShardLayout
from trainer.config import PrecisionConfig, RunConfig
from trainer.data.multi30k import cache_root
from trainer.parallel.context import ParallelContext
from trainer.parallel.zero import ShardedAdam, ShardedGradNorm, ShardedReduction
from trainer.parallel.seam import Parallelized, parallelize
from trainer.precision import LossScaler, mixed_precision
from trainer.step import (GradAccumulator, GradNorm, GradStep, MicroStep, Stepper, TeacherForcedLoss, TrainStep,
                          UpdateStep)


def cpu_speedups(cfg: RunConfig, backend: str):
    """The CPU speed-ups `cfg.train.cpu_*` asks for on `backend` (None off the CPU, and under
    mixed precision: their written-out backwards and C++ kernels compute in float32)."""
    t = cfg.train
    if cfg.precision.level != "O0":
        return None
    return cpu.CpuSpeedups.choose(backend, t.cpu_backward, t.cpu_kernels, t.fused_loss,
                                  Path(cache_root(cfg.data.cache_dir)))


def speedups_note(cfg: RunConfig, backend: str) -> Optional[str]:
    """Why CPU speed-ups the config asks for are off, for the run's first lines (None if nothing to say)."""
    t = cfg.train
    if backend.lower() == "cpu" and cfg.precision.level != "O0" and (t.cpu_backward or t.fused_loss):
        return (f"CPU speed-ups (train.cpu_backward, cpu_kernels, fused_loss) are off at precision.level="
                f"{cfg.precision.level}: they compute in float32; MindSpore's own kernels run the "
                f"{cfg.precision.dtype} graph")
    return None


def recompute_note(cfg: RunConfig, backend: str) -> Optional[str]:
    """What model.recompute buys on this backend, for the run's first lines (None if nothing to say)."""
    if cfg.model.recompute != "none" and backend.lower() == "cpu":
        return (f"model.recompute={cfg.model.recompute} on the CPU gives the same gradients but saves no memory: "
                f"MindSpore 2.10's CPU runtime keeps every intermediate of a graph, and full recompute held 2-26 % "
                f"more in training and stepped up to ~20 % slower (bench/README.md); it is meant for Ascend")
    return None


def build_model(cfg: RunConfig, src_vocab_size: int, tgt_vocab_size: int, backend: str) -> nn.Cell:
    """The model `cfg.model` describes (its `arch`), with the CPU speed-ups applied on the CPU."""
    return _model(cfg, src_vocab_size, tgt_vocab_size, cpu_speedups(cfg, backend))


def _model(cfg: RunConfig, src_vocab_size: int, tgt_vocab_size: int,
           speedups: Optional[cpu.CpuSpeedups]) -> nn.Cell:
    return cpu.accelerate(build(cfg.model, src_vocab_size, tgt_vocab_size, PAD), speedups)


@dataclass
class Built:
    """Everything one rank trains with."""

    model: nn.Cell  # an architecture of model/api.py
    parallel: Parallelized
    optimizer: nn.Optimizer  # holds the weights, Adam's moments and the step count: what a checkpoint keeps
    step: Stepper  # TrainStep (+ MicroStep with accumulation), wrapped by the seam under semi_auto
    layout: ShardLayout  # how this rank's state is split: what a checkpoint records and reshards


def build_training(cfg: RunConfig, ctx: ParallelContext, src_vocab_size: int, tgt_vocab_size: int) -> Built:
    """Model, parallel layout, Adam (learning rate a Parameter set every step) and the train step."""
    speedups = cpu_speedups(cfg, ctx.backend)
    model = _model(cfg, src_vocab_size, tgt_vocab_size, speedups)  # same init on every rank
    axes = split_axes(model)  # the layout table's axes, recorded even when nothing is split
    parallel = parallelize(model, ctx)
    apply_recompute(model, cfg.model.recompute)  # after every swap of sub-cells: it marks the cells it finds
    plan, split = ctx.plan, bool(parallel.shard_axis)
    if split and set(parallel.shard_axis) != set(axes):
        raise RuntimeError(f"the layout split {sorted(set(parallel.shard_axis) ^ set(axes))[:4]} unlike its table")
    if parallel.dp_group is not None:  # masks of this rank's rows of the global batch (model/dropout.py)
        shard_dropout(model, ctx.dp_rank)
    layout = ShardLayout(ctx.mp_rank if split else 0, plan.model_parallel if split else 1,
                         ctx.dp_rank, plan.data_parallel, axes)
    opt = cfg.optim
    shard = parallel.optimizer_shard(model.trainable_params())
    if shard is not None:  # Adam's state split over the data-parallel ranks (trainer/parallel/zero.py)
        optimizer = ShardedAdam(model.trainable_params(), shard, opt.beta1, opt.beta2, opt.eps, opt.weight_decay)
    else:
        optimizer = Adam(model.trainable_params(), ms.Tensor(0.0, ms.float32), opt.beta1, opt.beta2, opt.eps,
                         opt.weight_decay)
    step = assemble_step(model, optimizer, opt.label_smoothing, opt.clip_norm, parallel, speedups,
                         cfg.precision, cfg.train.gradient_accumulation_steps, cfg.train.seed)
    return Built(model, parallel, optimizer, step, layout)


def assemble_step(model: nn.Cell, optimizer: nn.Optimizer, smoothing: float, clip_norm: float,
                  parallel: Parallelized = Parallelized("standalone"),
                  speedups: Optional[cpu.CpuSpeedups] = None,
                  precision: PrecisionConfig = PrecisionConfig(), accumulation_steps: int = 1,
                  seed: int = 0) -> Stepper:
    """The step of an already parallelized model: mixed precision, loss (CPU-fused where it may),
    gradients, accumulation, the seam's reductions and norm weighting, unscaling, the finite
    check, clipping, the optimizer. In training mode. Dropout masks follow (seed, step)."""
    weights = optimizer.parameters
    loss_fn = cpu.fused_loss(model, smoothing, PAD, speedups, parallel.splits_projection)
    if loss_fn is None:
        criterion = cpu.criterion(smoothing, PAD, speedups) or LabelSmoothedCrossEntropy(smoothing, PAD)
        loss_fn = TeacherForcedLoss(mixed_precision(model, precision), criterion)
    grad_step = GradStep(loss_fn, weights, getattr(model, "dropout_key", None))
    if isinstance(optimizer, ShardedAdam):  # the flat gradient's pieces: reduce-scatter, one norm, gather
        norm = ShardedGradNorm(optimizer.shard, parallel.norm_weights(weights), parallel.mp_sum())
        reduction = ShardedReduction(optimizer.shard, parallel.wire_dtype())
    else:
        kernel = cpu.sum_of_squares_kernel(speedups, weights, split=bool(parallel.shard_axis))
        norm = GradNorm(parallel.norm_weights(weights), parallel.mp_sum(), kernel)
        reduction = parallel.reduction(weights)
    accumulator = GradAccumulator(weights) if accumulation_steps > 1 else None
    update = UpdateStep(optimizer, clip_norm, reduction, norm)
    train_step = TrainStep(grad_step, update, accumulator)
    micro_step = MicroStep(grad_step, accumulator) if accumulator is not None else None
    for cell in (train_step, micro_step):
        if cell is not None:
            cell.set_train(True)
    return Stepper(parallel.wrap(train_step), micro_step and parallel.wrap(micro_step),
                   LossScaler.from_config(precision), parallel.local_rows, PAD, seed)
