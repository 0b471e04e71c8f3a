import sys, resource
import numpy as np
import mindspore as ms
from mindspore import nn, ops, Tensor
ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
if len(sys.argv) > 1: exec(sys.argv[1])
import os; L, N, D = int(os.environ.get("BLOCKS", 8)), 8192, 512
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
x = Tensor(np.random.randn(N, D).astype(np.float32))
for i in range(3): loss = net(x)
print("forward only peak MiB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
