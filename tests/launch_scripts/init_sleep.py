"""Join the MindSpore cluster, then sleep (a quiet, healthy job)."""
import os
import sys
import time

import mindspore as ms
from mindspore.communication import init

ms.set_device("CPU")
init()
print(f"JOINED role={os.environ.get('MS_ROLE')}", flush=True)
time.sleep(float(sys.argv[1]) if len(sys.argv) > 1 else 20)
print("DONE", flush=True)
