"""Mixed precision (mindspore.amp) and the loss scale of a run.

    check_precision(cfg, backend)    config-time refusal of what the backend cannot compute
    precision_caveat(cfg)            the warning for a precision that has not run anywhere
    mixed_precision(model, cfg)      the network the training loss runs: mindspore.amp at cfg's level
    LossScaler                       the scale, its growth and backoff, skipped steps, the collapse stop

Parameters, gradients and Adam moments stay float32 at every level (master weights); the
level decides which computations run in `precision.dtype`:

    O0  everything float32
    O1  mindspore.amp's white list (Dense, MatMul, BatchMatMul, ReLU) in dtype (rewritten copy of
        the network for training; validation decodes with the float32 model)
    O2  every Cell in dtype except LayerNorm, the model's output cast back to float32, so the
        loss and its softmax run in float32; attention's softmax is float32 at every level
        (model/attention.py). The cast is made in place: validation decodes in dtype too
    O3  every Cell in dtype, the output cast back to float32

The scale lives on the host: it is an input of the compiled step (changing it recompiles
nothing), its state goes into checkpoints, and the stop after a collapse is a Python error
that names the step. mindspore.amp.DynamicLossScaler keeps its state inside the graph and
has neither a configurable minimum nor a count of consecutive skips, which this needs.
"""
import atexit
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Dict, Optional

import mindspore as ms
from mindspore import nn

from trainer.config import PrecisionConfig, RunConfig
from trainer.typed_yaml import ConfigError

DTYPES = {"float16": ms.float16, "bfloat16": ms.bfloat16}


def check_precision(cfg: RunConfig, backend: str) -> None:
    """ConfigError for a precision the backend cannot run (bfloat16 on the CPU)."""
    p = cfg.precision
    if p.level != "O0" and p.dtype == "bfloat16" and backend.lower() == "cpu":
        raise ConfigError(f"precision.dtype=bfloat16 at precision.level={p.level} cannot run on the CPU "
                          f"(MindSpore's CPU MatMul has no bfloat16 kernel); use precision.dtype=float16 "
                          f"here, or run on Ascend")


def precision_caveat(cfg: RunConfig) -> Optional[str]:
    """A line for the run's start when the precision chosen has not run anywhere (None otherwise)."""
    p = cfg.precision
    if p.level != "O0" and p.dtype == "bfloat16":
        return (f"precision.dtype=bfloat16 at {p.level} has not run anywhere yet (MindSpore's CPU refuses it "
                f"and mindrun has not run on NPUs); float16 {p.level} with dynamic loss scaling is the tested "
                f"mixed precision")
    return None


def mixed_precision(model: nn.Cell, precision: PrecisionConfig) -> nn.Cell:
    """The network the training loss calls: `model` itself at O0, else mindspore.amp's at the level."""
    if precision.level == "O0":
        return model
    from mindspore.amp import auto_mixed_precision

    if precision.level != "O1":
        return auto_mixed_precision(model, precision.level, DTYPES[precision.dtype])
    # O1 goes through mindspore.rewrite, which writes the rewritten network's source to
    # ./rewritten_network and compiles from it later: keep it out of the user's directory
    previous = os.getcwd()
    os.chdir(_rewrite_dir())
    try:
        return auto_mixed_precision(model, precision.level, DTYPES[precision.dtype])
    finally:
        os.chdir(previous)


def _rewrite_dir() -> str:
    """A directory of this process for mindspore.rewrite's generated source, removed at exit."""
    global _REWRITE_DIR
    if _REWRITE_DIR is None:
        _REWRITE_DIR = tempfile.mkdtemp(prefix="mindrun-amp-")
        atexit.register(shutil.rmtree, _REWRITE_DIR, True)
    return _REWRITE_DIR


_REWRITE_DIR: Optional[str] = None


class ScaleCollapsed(RuntimeError):
    """The loss scale sat at its minimum for too many consecutive skipped steps."""


@dataclass
class LossScaler:
    """The loss scale policy of `precision:` (none, static or dynamic), run on the host.

    `update(finite)` after every optimizer step: an overflowing step was skipped by the
    update Cell; dynamic scaling multiplies the scale by backoff_factor (not below
    min_scale) and by growth_factor after growth_interval clean steps in a row.
    """

    policy: str  # none | static | dynamic
    scale: float
    growth_factor: float = 2.0
    backoff_factor: float = 0.5
    growth_interval: int = 1000
    min_scale: float = 1.0
    max_skips_at_min: int = 20
    clean_steps: int = 0  # clean steps since the last change of scale
    skipped_steps: int = 0  # overflowing steps skipped in the whole run
    skips_at_min: int = 0  # consecutive skipped steps with the scale at min_scale

    @classmethod
    def from_config(cls, p: PrecisionConfig) -> "LossScaler":
        """The scaler `precision:` asks for (scale 1 without scaling)."""
        policy = p.scaling()
        scale = 1.0 if policy == "none" else p.initial_scale
        floor = p.min_scale if policy == "dynamic" else scale  # a fixed scale is its own minimum
        return cls(policy, scale, p.growth_factor, p.backoff_factor, p.growth_interval, floor, p.max_skips_at_min)

    def update(self, finite: bool, step: int) -> None:
        """Account for optimizer step `step`; ScaleCollapsed when the scale cannot recover."""
        if finite:
            self.skips_at_min = 0
            self.clean_steps += 1
            if self.policy == "dynamic" and self.clean_steps >= self.growth_interval:
                self.scale *= self.growth_factor
                self.clean_steps = 0
            return
        self.skipped_steps += 1
        self.clean_steps = 0
        at_min = self.scale <= self.min_scale
        if self.policy == "dynamic":
            self.scale = max(self.scale * self.backoff_factor, self.min_scale)
        self.skips_at_min = self.skips_at_min + 1 if at_min else 0
        if self.skips_at_min >= self.max_skips_at_min:
            raise ScaleCollapsed(
                f"step {step}: gradients were not finite for {self.skips_at_min} consecutive steps with the loss "
                f"scale at its minimum ({self.min_scale:g}); no update was applied since the last good step and "
                f"nothing was saved after it. The model diverged: lower optim.lr, raise optim.warmup_steps, use "
                f"precision.level=O1 or O0, or precision.dtype=bfloat16 on Ascend")

    def state(self) -> Dict[str, float]:
        """What a checkpoint keeps of the scaler."""
        return {"scale": self.scale, "clean_steps": self.clean_steps, "skipped_steps": self.skipped_steps,
                "skips_at_min": self.skips_at_min}

    def restore(self, state: Dict[str, float]) -> None:
        """Continue from a checkpoint's `state()`."""
        if self.policy != "none":
            self.scale = float(state["scale"])
        self.clean_steps = int(state["clean_steps"])
        self.skipped_steps = int(state["skipped_steps"])
        self.skips_at_min = int(state["skips_at_min"])
