import time, os
t0 = time.time()
import mindspore as ms
from mindspore.communication import init, get_rank
t1 = time.time()
init()
t2 = time.time()
role = os.environ.get("MS_ROLE")
if role != "MS_SCHED":
    print(f"INITTIME rank {get_rank()} import {t1-t0:.2f} init {t2-t1:.2f}", flush=True)
