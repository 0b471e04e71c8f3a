"""Wait for SIGTERM, then 'save a checkpoint' (write a file) and exit 0: `trap_term.py OUTDIR`."""
import os
import signal
import sys
import time
from pathlib import Path

out = Path(sys.argv[1])


def on_term(signum, frame):
    time.sleep(0.5)  # a checkpoint takes a moment
    (out / f"saved_{os.environ.get('MS_ROLE')}_{os.environ.get('RANK_ID')}").write_text("ok")
    sys.exit(0)


signal.signal(signal.SIGTERM, on_term)
(out / f"ready_{os.environ.get('MS_ROLE')}_{os.environ.get('RANK_ID')}").write_text("ok")
print("READY", flush=True)
time.sleep(300)
