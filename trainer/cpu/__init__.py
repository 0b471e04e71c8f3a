"""CPU acceleration, applied by the build path to the unchanged model (never used off the CPU).

MindSpore's CPU kernels for a few gradients are slow, so on the CPU the build path
(trainer/build.py) swaps in, switched by `train.cpu_*`:

- `cpu_backward`: Dense bias and LayerNorm gradients written out, attention's softmax
  backward (backward.py); with `cpu_kernels`, LayerNorm forward/backward, the softmax
  backward, the clipping norm's sum of squares and the dropout masks (model/dropout.py's
  counter hash, same bits) as C++ kernels (kernels/, grad_norm.py, dropout.py);
- `fused_loss`: the output projection and label-smoothed loss as one Cell whose backward
  never builds the logits' gradient, padded target rows dropped first (loss.py); where a
  parallel layout splits the projection, the loss alone with its backward written out.

Every piece computes what the plain model computes (tests compare gradients with autodiff);
the speed-ups are measured in bench/README.md.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import mindspore as ms
from mindspore import nn

from trainer.cpu.backward import use_cpu_backward
from trainer.cpu.dropout import use_compiled_masks
from trainer.cpu.grad_norm import CompiledSumOfSquares
from trainer.cpu import kernels
from trainer.cpu.loss import FusedProjectionLoss, WrittenOutCrossEntropy


@dataclass(frozen=True)
class CpuSpeedups:
    """Which speed-ups apply (decided once by the build path from `train.cpu_*` and the backend)."""

    backward: bool = True
    fused_loss: bool = True
    kernel_dir: Optional[Path] = None  # where the C++ kernels are compiled; None: MindSpore's ops

    @classmethod
    def choose(cls, backend: str, backward: bool, kernels_on: bool, fused_loss: bool,
               cache_dir: Path) -> Optional["CpuSpeedups"]:
        """The speed-ups for `backend`: None off the CPU; kernels only with the written-out backward."""
        if backend != "CPU":
            return None
        return cls(backward, fused_loss, cache_dir / "kernels" if backward and kernels_on else None)


def accelerate(model: nn.Cell, speedups: Optional[CpuSpeedups]) -> nn.Cell:
    """Swap the model's bias, LayerNorm and softmax backwards and its dropout masks in place
    (a no-op without speed-ups)."""
    if speedups is not None and speedups.backward:
        use_cpu_backward(model, speedups.kernel_dir)
        use_compiled_masks(model, speedups.kernel_dir)
    return model


def fused_loss(model: nn.Cell, smoothing: float, pad_id: int, speedups: Optional[CpuSpeedups],
               splits_projection: bool) -> Optional[nn.Cell]:
    """The output projection and the loss as one Cell (called like TeacherForcedLoss), where it applies:
    on the CPU, with train.fused_loss, and with the projection the model's own (no layout splits it)."""
    if speedups is None or not speedups.fused_loss or splits_projection:
        return None
    return FusedProjectionLoss(model, smoothing, pad_id, skip_padding=True)


def criterion(smoothing: float, pad_id: int, speedups: Optional[CpuSpeedups]) -> Optional[nn.Cell]:
    """On the CPU, the label-smoothed loss with its backward written out (same sums); else None."""
    return WrittenOutCrossEntropy(smoothing, pad_id) if speedups is not None else None


def sum_of_squares_kernel(speedups: Optional[CpuSpeedups], weights, split: bool) -> Optional[nn.Cell]:
    """The clipping norm's C++ sum of squares, where it applies: float32 weights, none split over ranks."""
    if speedups is None or speedups.kernel_dir is None or split:
        return None
    if any(p.dtype != ms.float32 for p in weights):
        return None
    library = kernels.library("grad_norm", str(speedups.kernel_dir))
    return CompiledSumOfSquares(library) if library else None


__all__ = ["CpuSpeedups", "accelerate", "fused_loss", "criterion", "sum_of_squares_kernel"]
