"""Learning-rate schedules as pure functions of the step and the run's progress."""
import math
from typing import Optional


def learning_rate(step: int, peak: float, warmup: int, schedule: str = "inverse_sqrt",
                  total_steps: Optional[int] = None, min_lr: float = 0.0,
                  time_fraction: Optional[float] = None) -> float:
    """Rate for optimiser step `step` (1-based).

    inverse_sqrt: linear warmup to `peak`, then peak * sqrt(warmup / step) (Vaswani et al.).
    cosine: linear warmup, then cosine decay from `peak` to `min_lr` over the run. The run's
    progress is the larger of the step share, (step - warmup) / (total_steps - warmup), and
    `time_fraction`, the share of a wall-clock budget already spent, so a run stopped by its
    time budget still ends annealed (a budget-aware schedule, Li et al. 2020).
    """
    step = max(step, 1)
    if warmup and step <= warmup:
        return peak * step / warmup
    if schedule == "inverse_sqrt":
        return peak * math.sqrt(max(warmup, 1) / step)
    if schedule == "cosine":
        if not total_steps and time_fraction is None:
            raise ValueError("the cosine schedule needs an end: set train.max_steps or train.time_budget_minutes")
        progress = (step - warmup) / max(1, total_steps - warmup) if total_steps else 0.0
        progress = min(1.0, max(progress, time_fraction or 0.0))
        return min_lr + 0.5 * (peak - min_lr) * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule {schedule!r}")
