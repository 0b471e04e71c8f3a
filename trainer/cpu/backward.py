"""Backward passes written out where MindSpore's CPU kernels are slow: bias, LayerNorm and softmax gradients.

MindSpore 2.10's CPU `BiasAddGrad` sums a [N, C] gradient over its rows about 50 times
slower than a [1, N] x [N, C] matmul by a ones vector (8.3 ms against 0.17 ms for
2,048 x 1,024), and its `LayerNormGrad` takes about twice as long as the same gradient
from element-wise ops (bench/HISTORY.md, issue 5). `use_cpu_backward` swaps, in place,
every `nn.Dense`'s bias add and every `nn.LayerNorm` of a model for Cells with the same
forward primitive and parameters and a written-out `bprop`. The model definition is
unchanged: like a parallel layout, this is applied to it (by trainer/build.py through
trainer/cpu, on the CPU only), and checkpoints are the same.

Where a C++ compiler is at hand (trainer/cpu/kernels), LayerNorm forward and backward are
one compiled kernel each (about ten times faster than the primitive forward plus the
written-out backward) and attention's softmax gets a one-kernel backward.
"""
from typing import Optional

import numpy as np
import mindspore as ms
from mindspore import nn, ops

from trainer.cpu import kernels as cpu_kernels


def _column_sum(x):
    """Sum of [N, C] over its rows as one GEMV, [C]."""
    return ops.matmul(ops.ones((1, x.shape[0]), x.dtype), x).reshape(-1)


class BiasAdd(nn.Cell):
    """x [N, C] + b [C] by the `BiasAdd` primitive; the bias gradient is a GEMV, not `BiasAddGrad`."""

    def __init__(self):
        super().__init__()
        self.bias_add = ops.BiasAdd()

    def construct(self, x, b):
        return self.bias_add(x, b)

    def bprop(self, x, b, out, dout):
        return dout, _column_sum(dout)


class _LayerNormRows(nn.Cell):
    """LayerNorm of [N, d] rows: returns (y, mean, variance) as the CPU primitive does; backward written out."""

    def __init__(self, epsilon: float):
        super().__init__()
        self.epsilon = epsilon
        self.layer_norm = ops.LayerNorm(begin_norm_axis=-1, begin_params_axis=-1, epsilon=epsilon)

    def construct(self, x, gamma, beta):
        return self.layer_norm(x, gamma, beta)

    def bprop(self, x, gamma, beta, out, dout):
        # with xhat = (x - mean) * rstd and g = dy * gamma:
        # dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), dgamma = sum(dy * xhat), dbeta = sum(dy)
        dy = dout[0]
        rstd = ops.rsqrt(out[2] + self.epsilon)
        xhat = (x - out[1]) * rstd
        g = dy * gamma
        dx = rstd * (g - g.mean(-1, keep_dims=True) - xhat * (g * xhat).mean(-1, keep_dims=True))
        return dx, _column_sum(dy * xhat), _column_sum(dy)


class _CompiledLayerNormRows(nn.Cell):
    """LayerNorm of float32 [N, d] rows by the C++ kernels of trainer/cpu/kernels/layer_norm.cc.

    Returns (y, mean, rstd); the backward is the library's other kernel.
    """

    def __init__(self, epsilon: float, library: str):
        super().__init__()
        self.epsilon = ms.Tensor(np.array([epsilon], np.float32))
        self.forward_kernel = ops.Custom(
            f"{library}:LayerNormForward", out_shape=lambda x, g, b, e: (x, x[:-1], x[:-1]),
            out_dtype=lambda x, g, b, e: (x, x, x), func_type="aot")
        self.backward_kernel = ops.Custom(
            f"{library}:LayerNormBackward", out_shape=lambda x, g, m, r, dy: (x, g, g),
            out_dtype=lambda x, g, m, r, dy: (x, g, g), func_type="aot")

    def construct(self, x, gamma, beta):
        return self.forward_kernel(x, gamma, beta, self.epsilon)

    def bprop(self, x, gamma, beta, out, dout):
        return self.backward_kernel(x, gamma, out[1], out[2], dout[0])


class LayerNorm(nn.Cell):
    """`nn.LayerNorm` over the last axis with the same gamma and beta, backward written out.

    With `library` (trainer/cpu/kernels' compiled layer_norm), forward and backward are one C++
    kernel each, in float32; without, the LayerNorm primitive and element-wise ops.
    """

    def __init__(self, norm: nn.LayerNorm, library: Optional[str] = None):
        super().__init__()
        if norm.begin_norm_axis != -1 or len(norm.normalized_shape) != 1:
            raise ValueError(f"only LayerNorms over the last axis are supported, got {norm.normalized_shape}")
        self.gamma = norm.gamma
        self.beta = norm.beta
        self.in_cpp = library is not None
        self.rows = _CompiledLayerNormRows(norm.epsilon, library) if library else _LayerNormRows(norm.epsilon)

    def construct(self, x):
        shape = x.shape
        rows = x.reshape(-1, shape[-1])
        if self.in_cpp:
            y, _, _ = self.rows(rows.astype(ms.float32), self.gamma.astype(ms.float32), self.beta.astype(ms.float32))
            return y.astype(x.dtype).reshape(shape)
        y, _, _ = self.rows(rows, self.gamma, self.beta)
        return y.reshape(shape)


class Softmax(nn.Cell):
    """Softmax over the last axis by the primitive; its backward one C++ kernel (trainer/cpu/kernels/softmax.cc)."""

    def __init__(self, library: str):
        super().__init__()
        self.softmax = ops.Softmax(-1)
        self.backward_kernel = ops.Custom(f"{library}:SoftmaxBackward", out_shape=lambda y, dy: y,
                                          out_dtype=lambda y, dy: y, func_type="aot")

    def construct(self, x):
        return self.softmax(x)

    def bprop(self, x, out, dout):
        return (self.backward_kernel(out.astype(ms.float32), dout.astype(ms.float32)).astype(x.dtype),)


def _is_last_axis_softmax(value) -> bool:
    return isinstance(value, ops.Softmax) and tuple(value.axis) == (-1,)


def use_cpu_backward(model: nn.Cell, kernel_dir: Optional[str] = None) -> int:
    """Swap `model`'s Dense bias adds, LayerNorms (and softmaxes) in place; returns how many were swapped.

    With kernel_dir, LayerNorms run trainer/cpu/kernels' C++ LayerNorm and the softmax
    primitives that Cells hold as `softmax` (attention's) get its C++ backward, compiled
    into (or loaded from) that directory; what cannot be compiled keeps MindSpore's ops.
    """
    norm_library = cpu_kernels.library("layer_norm", str(kernel_dir)) if kernel_dir else None
    softmax_library = cpu_kernels.library("softmax", str(kernel_dir)) if kernel_dir else None
    params = list(model.get_parameters())
    names = [p.name for p in params]
    swapped = 0
    for _, cell in list(model.cells_and_names()):
        if softmax_library and _is_last_axis_softmax(getattr(cell, "softmax", None)):
            cell.softmax = Softmax(softmax_library)
            swapped += 1
        for attr, child in list(cell.name_cells().items()):
            if type(child) is nn.LayerNorm:  # noqa: E721 (subclasses may compute something else)
                setattr(cell, attr, LayerNorm(child, norm_library))
                swapped += 1
            elif type(child) is nn.Dense and child.has_bias:  # noqa: E721
                child.bias_add = BiasAdd()
                swapped += 1
    # Cell.__setattr__ re-prefixes a new child's parameters with its attribute name alone
    # ("norm.gamma"), which collides across layers: give back the full names.
    for param, name in zip(params, names):
        param.name = name
    return swapped

