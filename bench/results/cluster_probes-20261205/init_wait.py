import time, os
t0 = time.time()
import mindspore as ms
from mindspore.communication import init, get_rank
t1 = time.time()
def listening(port):
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if int(parts[1].rsplit(":", 1)[1], 16) == port and parts[3] == "0A":
                        return True
        except OSError:
            pass
    return False
role = os.environ.get("MS_ROLE")
if role != "MS_SCHED":
    port = int(os.environ["MS_SCHED_PORT"])
    while not listening(port):
        time.sleep(0.05)
tw = time.time()
init()
t2 = time.time()
if role != "MS_SCHED":
    print(f"INITTIME rank {get_rank()} import {t1-t0:.2f} wait {tw-t1:.2f} init {t2-tw:.2f}", flush=True)
