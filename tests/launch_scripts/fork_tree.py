"""A worker whose children outlive it unless someone kills them: a grandchild, and a great-grandchild
in a session of its own. Prints every PID, then sleeps."""
import os
import sys
import time

depth = int(sys.argv[1]) if len(sys.argv) > 1 else 2
pids = [os.getpid()]
for level in range(depth):
    pid = os.fork()
    if pid:
        break  # the parent stops descending and sleeps below
    if level == depth - 1:
        os.setsid()  # the deepest escapes the worker's session
    pids.append(os.getpid())
print(f"PIDS {os.getpid()} level={len(pids) - 1}", flush=True)
time.sleep(600)
