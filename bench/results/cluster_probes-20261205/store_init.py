import os, sys, time
t0 = time.time()
import numpy as np
import mindspore as ms
from mindspore import nn, ops
from datetime import timedelta
from mindspore.mint.distributed import TCPStore
from mindspore.communication.management import _init_with_store
from mindspore.communication import get_rank, get_group_size, create_group
r, n, port = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
for k in ("MS_ROLE", "MS_SCHED_HOST", "MS_SCHED_PORT", "MS_WORKER_NUM", "MS_NODE_ID"):
    os.environ.pop(k, None)
ms.set_context(mode=ms.GRAPH_MODE)
ms.set_device("CPU")
t1 = time.time()
store = TCPStore("127.0.0.1", port, world_size=n, is_master=(r == 0), timeout=timedelta(seconds=60))
_init_with_store(backend="mccl", timeout=timedelta(seconds=60), world_size=n, rank=r, store=store)
t2 = time.time()
class S(nn.Cell):
    def __init__(self):
        super().__init__(); self.s = ops.AllReduce()
    def construct(self, x):
        return self.s(x)
out = S()(ms.Tensor(np.full(4, r + 1.0, np.float32))).asnumpy()
g = ops.AllGather()(ms.Tensor([[float(r)]], ms.float32)).asnumpy().ravel()
print(f"STORE rank {get_rank()} of {get_group_size()} import {t1-t0:.2f} init {t2-t1:.2f} allreduce {out} allgather {g} total {time.time()-t0:.2f}", flush=True)
