"""The few lines `mindrun train` prints at its end; the full record stays in <run>/summary.json."""
from pathlib import Path
from statistics import median
from typing import Dict, List, Optional

from trainer.loop.metrics import read_metrics


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"


def _pointer(path: Optional[str]) -> str:
    if not path:
        return "-"
    p = Path(path)
    return f"{p} -> {p.resolve().name}" if p.is_symlink() else str(p)


def median_of(run_dir: Path, key: str = "tokens_per_s") -> Optional[float]:
    """Median of a training record's `key` over the logged windows (the first, which includes compiling,
    left out); None if the run logged none."""
    try:
        values = [r[key] for r in read_metrics(Path(run_dir) / "metrics.jsonl", "train") if key in r]
    except (OSError, ValueError):
        return None
    values = values[1:] or values
    return median(values) if values else None


def describe(summary: Dict) -> List[str]:
    """Human lines for a training summary (as returned by trainer.train.train)."""
    if summary.get("role") == "scheduler":
        return []
    run = Path(summary["run_dir"])
    rate = median_of(run, "tokens_per_s")
    signal = summary.get("interrupted_by_signal")
    how = f"stopped by signal {signal} (checkpoint saved)" if signal else "finished"
    lines = [f"training {how}: {summary['steps']:,} steps, {summary['epochs']} epochs in "
             f"{_duration(summary['train_seconds'])}" + (f", {rate:,.0f} tokens/s (median)" if rate else "")]
    tflops, mfu = median_of(run, "tflops_per_device"), median_of(run, "mfu")
    if tflops is not None:
        lines.append(f"model FLOPs: {tflops:.3g} TFLOP/s per device (median)" +
                     (f", MFU {mfu:.1%} of the device's peak" if mfu is not None else
                      " (MFU: set train.device_peak_tflops, or device_peak_tflops in the cluster file)"))
    if summary.get("time_s"):
        from trainer.loop.time_shares import describe as time_line

        lines.append(time_line(summary["time_s"]))
    best = summary.get("best") or {}
    if best:
        scores = ", ".join(f"{k} {v:.2f}" for k, v in best.items() if k in ("bleu", "loss", "ppl") and v is not None)
        lines.append(f"best validation: {scores} at step {best.get('step'):,}")
    lines.append(f"checkpoints: best {_pointer(summary.get('best_checkpoint'))}")
    lines.append(f"             last {_pointer(summary.get('last_checkpoint'))}")
    lines.append(f"summary: {run / 'summary.json'}; curves: tensorboard --logdir {run / 'tb'}")
    return lines
