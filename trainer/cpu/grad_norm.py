"""The clipping norm's sum of squares over all gradients as one C++ kernel (kernels/grad_norm.cc)."""
import mindspore as ms
from mindspore import nn, ops


class CompiledSumOfSquares(nn.Cell):
    """Sum of squares of all float32 gradients, [] (one kernel launch instead of one per gradient)."""

    def __init__(self, library: str):
        super().__init__()
        self.kernel = ops.Custom(f"{library}:SumOfSquares", out_shape=lambda *shapes: [1],
                                 out_dtype=lambda *dtypes: ms.float32, func_type="aot")

    def construct(self, grads):
        return self.kernel(*grads).reshape(())
