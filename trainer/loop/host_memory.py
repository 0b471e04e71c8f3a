"""This process's host memory over a run: what was resident before the model was built (MindSpore, the data,
the tokenizer), the peak of training (up to the first validation), and the peak of the whole run; on an
accelerator also the device memory MindSpore's allocator peaked at.

On the CPU the host memory is the training's memory, so the training peak less the resident memory before the
model is what `mindrun plan` estimates for a CPU device (bench/planner.py fits the CPU memory model on it).
"""
import os
import re
import resource
from typing import Dict, Optional

LINE = re.compile(r"peak host memory: ([\d,]+) MiB \(rank (\d+); training ([\d,]+) MiB, of it ([\d,]+) MiB before "
                  r"the model was built; ([\d,]+) MiB at the end\)")


def resident_mib() -> float:
    """This process's resident memory now (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    except (OSError, ValueError, IndexError):
        return 0.0


def peak_mib() -> float:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def device_peak_mib(backend: str):
    """The peak device memory MindSpore's allocator handed out (MiB), on an accelerator; None on the CPU (host
    memory is the device's there) or where the runtime does not say. Not yet run on an NPU."""
    if backend.upper() == "CPU":
        return None
    try:
        import mindspore as ms

        return round(ms.runtime.max_memory_allocated() / 2 ** 20)
    except Exception:  # an older MindSpore, or a runtime without the counter: nothing to report
        return None


class HostMemory:
    """Readings of one rank's host memory; `before_model` is taken when it is made."""

    def __init__(self) -> None:
        self.before_model = resident_mib()
        self.training: Optional[float] = None

    def training_done(self) -> None:
        """The peak of training: call before the first validation (and at the end of a run without one)."""
        if self.training is None:
            self.training = peak_mib()

    def record(self) -> Dict[str, int]:
        """MiB: peak of the run, peak of training, resident before the model, resident now."""
        self.training_done()
        return {"peak": round(peak_mib()), "training": round(self.training), "before_model": round(self.before_model),
                "end": round(resident_mib())}

    def line(self, rank: int, record: Optional[Dict[str, int]] = None) -> str:
        """The end-of-run console line (of `record`, else of a reading now)."""
        r = record or self.record()
        return (f"peak host memory: {r['peak']:,} MiB (rank {rank}; training {r['training']:,} MiB, of it "
                f"{r['before_model']:,} MiB before the model was built; {r['end']:,} MiB at the end)")


def parse_lines(text: str) -> Dict[int, Dict[str, int]]:
    """Rank -> the record of each end-of-run line in `text` (a job's console and logs), for benchmarks."""
    out = {}
    for match in LINE.finditer(text):
        peak, rank, training, before, end = (int(g.replace(",", "")) for g in match.groups())
        out[rank] = {"peak": peak, "training": training, "before_model": before, "end": end}
    return out
