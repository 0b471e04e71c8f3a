"""Model FLOPs utilisation: the model's training FLOPs at the measured token rate, against the device's peak.

FLOPs per token are the planner's count (trainer/parallel/sizing.py: 3 x the forward matmuls, attention
included, at the recipe's row length), so `mindrun plan`'s step estimates and the trainer's logged rate use
one model. The peak is per device: train.device_peak_tflops, else $MINDRUN_DEVICE_PEAK_TFLOPS, which
`mindrun launch --cluster FILE` sets from the file's `device_peak_tflops`; without one, only the achieved
TFLOP/s per device is logged.
"""
import os
from typing import Dict, Optional

from trainer.config import RunConfig
from trainer.parallel.sizing import flops_per_token, sequence_length

PEAK_ENV = "MINDRUN_DEVICE_PEAK_TFLOPS"


def device_peak_tflops(cfg: RunConfig) -> Optional[float]:
    """The configured peak, else the launcher's, else None (a malformed variable is an error naming it)."""
    if cfg.train.device_peak_tflops:
        return cfg.train.device_peak_tflops
    text = os.environ.get(PEAK_ENV)
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"${PEAK_ENV}={text!r} is not a number (TFLOP/s of one device)") from None
    return value if value > 0 else None


class ModelFlops:
    """Turns a logged global token rate into per-device TFLOP/s and, with a peak, MFU."""

    def __init__(self, cfg: RunConfig, vocab: int, devices: int):
        self.per_token = flops_per_token(cfg.model, vocab, sequence_length(cfg))
        self.devices = devices
        self.peak = device_peak_tflops(cfg)

    def record(self, tokens_per_s: float) -> Dict[str, float]:
        """{"tflops_per_device": ..., "mfu": ...} for a rate of the whole job (mfu only with a peak)."""
        achieved = tokens_per_s * self.per_token / self.devices / 1e12
        out = {"tflops_per_device": round(achieved, 4)}
        if self.peak:
            out["mfu"] = round(achieved / self.peak, 4)
        return out
