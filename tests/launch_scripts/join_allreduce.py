"""Join the cluster the way the launcher started it (launcher.join), all-reduce (rank + 1) in graph mode and
print the sum, the rank MindSpore gave and the seconds the join took.

`join_allreduce.py [FAIL_RANK UNTIL_RESTART]`: that rank then exits with code 3 while the restart count is
below UNTIL_RESTART (a failure for --max_restarts to recover from).
"""
import os
import sys
import time

import numpy as np

import mindspore as ms
from mindspore import nn, ops
from mindspore.communication import get_group_size, get_rank

from launcher.join import join_cluster

ms.set_context(mode=ms.GRAPH_MODE)
ms.set_device("CPU")
start = time.time()
join_cluster()
joined = time.time() - start


class Sum(nn.Cell):
    def __init__(self):
        super().__init__()
        self.reduce = ops.AllReduce()

    def construct(self, x):
        return self.reduce(x)


total = Sum()(ms.Tensor(np.array([get_rank() + 1.0], np.float32))).asnumpy()[0]
print(f"JOINED rank={get_rank()} size={get_group_size()} rank_id={os.environ.get('RANK_ID')} "
      f"role={os.environ.get('MS_ROLE')} store={os.environ.get('MINDRUN_STORE')} sum={total:.1f} "
      f"restart={os.environ.get('MINDRUN_RESTART_COUNT')} seconds={joined:.2f}", flush=True)
if len(sys.argv) > 2 and get_rank() == int(sys.argv[1]) and \
        int(os.environ.get("MINDRUN_RESTART_COUNT", "0")) < int(sys.argv[2]):
    sys.exit(3)
