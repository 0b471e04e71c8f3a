import time, os
t0 = time.time()
import mindspore as ms
from mindspore.communication import init, get_rank
t1 = time.time()
pinned = os.sched_getaffinity(0)
role = os.environ.get("MS_ROLE")
if role != "MS_SCHED":
    os.sched_setaffinity(0, set(range(os.cpu_count())))
init()
if role != "MS_SCHED":
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), pinned)
        except OSError:
            pass
t2 = time.time()
if role != "MS_SCHED":
    print(f"INITTIME rank {get_rank()} import {t1-t0:.2f} init {t2-t1:.2f} pinned {sorted(pinned)} now {sorted(os.sched_getaffinity(0))} tasks {len(os.listdir('/proc/self/task'))}", flush=True)
