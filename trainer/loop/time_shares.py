"""Where a run's wall time went: the share in training updates, and what took the rest.

    start-up     spawn (or train()) to the end of the first update: imports, cluster, data, build, checkpoint
                 load, the first update's graph compile (trainer/loop/startup.py has the phases)
    updates      every later update: the training itself
    validation   validation passes
    checkpoints  saves
    other        the rest: waiting for batches, logging, the run clock
"""
import time
from collections import Counter
from contextlib import contextmanager
from typing import Dict, Iterator


class TimeShares:
    """Seconds per kind of work since `origin` (a Unix time: the process's spawn, else train()'s start)."""

    KINDS = ("start-up", "updates", "validation", "checkpoints")

    def __init__(self, origin: float):
        self.origin = origin
        self.seconds: Counter = Counter()

    @contextmanager
    def timing(self, kind: str) -> Iterator[None]:
        """Add the time of the `with` block to `kind`."""
        start = time.time()
        try:
            yield
        finally:
            self.seconds[kind] += time.time() - start

    def record(self, now: float) -> Dict[str, float]:
        """Seconds of each kind, `other` and `wall`, for summary.json."""
        wall = max(now - self.origin, 1e-9)
        spent = {kind: round(self.seconds[kind], 1) for kind in self.KINDS}
        return {**spent, "other": round(max(wall - sum(self.seconds.values()), 0.0), 1), "wall": round(wall, 1)}


def describe(record: Dict[str, float]) -> str:
    """'time: updates 82 % of 10m 10s (start-up 35 s, validation 81 s, checkpoints 4 s, other 12 s)'."""
    wall = record["wall"]
    minutes, seconds = divmod(int(round(wall)), 60)
    rest = ", ".join(f"{kind} {record[kind]:.0f} s" for kind in ("start-up", "validation", "checkpoints", "other"))
    return f"time: training updates {record['updates'] / max(wall, 1e-9):.0%} of {minutes}m {seconds:02d}s ({rest})"
