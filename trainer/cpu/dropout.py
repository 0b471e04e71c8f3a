"""model/dropout.py's counter-based masks by one C++ kernel (trainer/cpu/kernels/dropout_mask.cc): same bits."""
from typing import Optional

import mindspore as ms
from mindspore import Tensor, nn, ops

from model.dropout import dropout_sites
from trainer.cpu import kernels as cpu_kernels


class CompiledMask(nn.Cell):
    """keep-mask (float32 0/1, the shape of x) of `base`, as model.dropout.CounterMask computes it."""

    def __init__(self, threshold: int, library: str):
        super().__init__()
        self.threshold = Tensor(threshold, ms.int32)
        self.kernel = ops.Custom(f"{library}:DropoutMask", out_shape=lambda x, b, t: x,
                                 out_dtype=lambda x, b, t: ms.float32, func_type="aot")

    def construct(self, x, base):
        return ops.stop_gradient(self.kernel(x, base, self.threshold))


def use_compiled_masks(model: nn.Cell, kernel_dir: Optional[str]) -> int:
    """Give every Dropout of `model` the C++ mask kernel; returns how many (0 without a compiler)."""
    library = cpu_kernels.library("dropout_mask", str(kernel_dir)) if kernel_dir else None
    if library is None:
        return 0
    sites = dropout_sites(model)
    for cell in sites:
        cell.mask = CompiledMask(cell.threshold, library)
    return len(sites)
