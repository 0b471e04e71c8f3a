"""Where a worker's start-up goes: seconds from the launcher spawning it to its first optimizer update.

The launcher puts the moment it spawns a group of workers in MINDRUN_SPAWNED_AT (a Unix time); the
trainer closes one phase after another and, at the first update, logs a `startup` record to
metrics.jsonl and prints one line, e.g.

    start-up: 11.4 s from spawn to the first update (imports 4.1, cluster 1.0, data 0.6, build 1.5,
    checkpoint 0.3, first update 3.9)

Phases: imports = Python, MindSpore and the trainer's imports and the config (spawn to train()); cluster =
joining the cluster (init(), or the local group of a job without one); data = tokenizer, encoded corpus; build =
model, layout, optimizer, train step (not compiled yet); checkpoint = compile-cache set-up, finding and loading
the checkpoint a resumed run continues from; first update = compiling the train step (or loading it from the compile
cache) and running it once. Without MINDRUN_SPAWNED_AT (not launched by mindrun) the first phase is
left out and the clock starts at train().
"""
import os
import time
from typing import Callable, Dict, List, Mapping, Optional, Tuple

SPAWNED_AT = "MINDRUN_SPAWNED_AT"


class StartupClock:
    """Phase durations of one worker's start-up, closed in order by `close(phase)`."""

    def __init__(self, env: Mapping[str, str] = os.environ, now: Callable[[], float] = time.time):
        self._now = now
        self.phases: List[Tuple[str, float]] = []
        spawned = env.get(SPAWNED_AT)
        self._last = now()
        if spawned:
            try:
                self._last = float(spawned)
            except ValueError:
                raise ValueError(f"{SPAWNED_AT}={spawned!r} is not a Unix time (it is set by `mindrun launch`)")
        self.origin = self._last  # where the run's wall time starts (trainer/loop/time_shares.py)
        if spawned:
            self.close("imports")

    def close(self, phase: str) -> None:
        """End `phase` now (it began where the previous one ended)."""
        t = self._now()
        self.phases.append((phase, max(t - self._last, 0.0)))
        self._last = t

    def total(self) -> float:
        return sum(s for _, s in self.phases)

    def record(self) -> Dict[str, float]:
        """The metrics.jsonl record: total and one `<phase>_s` per phase, in seconds."""
        return {"total_s": round(self.total(), 2), **{f"{p.replace(' ', '_')}_s": round(s, 2) for p, s in self.phases}}

    def line(self, resumed: Optional[bool] = None) -> str:
        """One line for the console."""
        since = "from spawn" if self.phases and self.phases[0][0] == "imports" else "from train()"
        what = " (resumed)" if resumed else ""
        parts = ", ".join(f"{p} {s:.1f}" for p, s in self.phases)
        return f"start-up{what}: {self.total():.1f} s {since} to the first update ({parts})"
