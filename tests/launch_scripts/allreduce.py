"""Join the MindSpore cluster, all-reduce (rank + 1) and print the sum and registration time."""
import os
import time

import numpy as np

import mindspore as ms
from mindspore import ops
from mindspore.communication import get_group_size, get_rank, init

ms.set_context(mode=ms.PYNATIVE_MODE)
ms.set_device("CPU")
init()
print(f"REGISTERED rank={get_rank()} size={get_group_size()} t={time.time():.6f}", flush=True)
if os.environ.get("MS_ROLE") != "MS_SCHED":
    total = ops.AllReduce()(ms.Tensor(np.array([get_rank() + 1.0], np.float32))).asnumpy()[0]
    print(f"ALLREDUCE rank={get_rank()} sum={total:.1f} restart={os.environ.get('MINDRUN_RESTART_COUNT')}",
          flush=True)
