"""Fail on purpose: `fail.py MARKER FAIL_RANK CODE [UNTIL_RESTART]`.

The rank FAIL_RANK exits with CODE (only while the restart count is below UNTIL_RESTART, if
given); every other process, the scheduler included, sleeps as a busy job would. MARKER is only
there so the test can find leftover processes in the process table.
"""
import os
import subprocess
import sys
import time

marker, fail_rank, code = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
until = int(sys.argv[4]) if len(sys.argv) > 4 else None
restart = int(os.environ.get("MINDRUN_RESTART_COUNT", "0"))
role, rank = os.environ.get("MS_ROLE"), int(os.environ.get("RANK_ID", "-1"))
print(f"START role={role} rank={rank} restart={restart}", flush=True)
if role == "MS_WORKER":
    # a grandchild, as data loaders make: it must not outlive the job either
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", marker])
if role == "MS_WORKER" and rank == fail_rank and (until is None or restart < until):
    time.sleep(1.0)
    print(f"FAILING rank={rank} code={code}", flush=True)
    sys.exit(code)
if until is not None and role == "MS_WORKER":
    time.sleep(2.0)
    print(f"DONE rank={rank} restart={restart}", flush=True)
    sys.exit(0)
if role == "MS_SCHED" and until is not None:
    sys.exit(0)
time.sleep(300)
