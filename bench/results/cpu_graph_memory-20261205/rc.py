import sys, resource, time
import numpy as np
import mindspore as ms
from mindspore import nn, ops, Tensor
ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
mode = sys.argv[1]
if len(sys.argv) > 2: exec(sys.argv[2])
L, N, D = 8, 8192, 512
class Block(nn.Cell):
    def __init__(self):
        super().__init__()
        self.a = nn.Dense(D, 4 * D); self.b = nn.Dense(4 * D, D)
    def construct(self, x):
        return x + self.b(ops.gelu(self.a(x)))
class Net(nn.Cell):
    def __init__(self):
        super().__init__()
        self.blocks = nn.CellList([Block() for _ in range(L)])
    def construct(self, x):
        for b in self.blocks:
            x = b(x)
        return (x * x).mean()
net = Net()
if mode == "full":
    for b in net.blocks: b.recompute()
grad = ms.value_and_grad(net, None, net.trainable_params())
@ms.jit
def step(x):
    return grad(x)
x = Tensor(np.random.randn(N, D).astype(np.float32))
t = time.time()
for i in range(3):
    loss, g = step(x)
print(mode, "loss", float(loss), "peak MiB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024, "s", round(time.time() - t, 1))
try:
    print("max_allocated MiB", ms.runtime.max_memory_allocated() // 2**20, "reserved", ms.runtime.max_memory_reserved() // 2**20)
except Exception as e:
    print("no stats", e)
