"""Learning-rate schedules as pure functions of the step (so a resumed run gets the same rate)."""
import math
from typing import Optional


def learning_rate(step: int, peak: float, warmup: int, schedule: str = "inverse_sqrt",
                  total_steps: Optional[int] = None, min_lr: float = 0.0) -> float:
    """Rate for optimiser step `step` (1-based).

    inverse_sqrt: linear warmup to `peak`, then peak * sqrt(warmup / step) (Vaswani et al.).
    cosine: linear warmup, then cosine decay from `peak` to `min_lr` at `total_steps`.
    """
    step = max(step, 1)
    if warmup and step <= warmup:
        return peak * step / warmup
    if schedule == "inverse_sqrt":
        return peak * math.sqrt(max(warmup, 1) / step)
    if schedule == "cosine":
        if not total_steps:
            raise ValueError("the cosine schedule needs total_steps (set train.max_steps)")
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return min_lr + 0.5 * (peak - min_lr) * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule {schedule!r}")
