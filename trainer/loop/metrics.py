"""Run metrics to metrics.jsonl (one JSON object a line) and to TensorBoard via tensorboardX."""
import json
import sys
import time
from pathlib import Path
from typing import Dict, Optional


def _import_summary_writer():
    """tensorboardX's SummaryWriter, without PyTorch: where torch is installed, tensorboardX imports it (3.7 s
    of every rank's start-up on the development machine) only to accept torch tensors, which mindrun never
    passes. A None entry in sys.modules makes that `import torch` fail the way a missing torch does."""
    if "torch" in sys.modules:
        from tensorboardX import SummaryWriter
        return SummaryWriter
    sys.modules["torch"] = None
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


class MetricsLog:
    """Writes records to <run>/metrics.jsonl and scalars to <run>/tb (rank 0 only writes).

    A new run starts a new metrics.jsonl. A run resumed at step `resume_step` keeps the
    records up to that step and drops later ones (written after the checkpoint it
    resumes from), in the JSON log and in TensorBoard alike.
    """

    def __init__(self, run_dir: Path, enabled: bool = True, resume_step: Optional[int] = None):
        self.enabled = enabled
        self._jsonl = None
        self._tb = None  # tensorboardX's SummaryWriter, opened at the first write (its import is 80 ms)
        self._tb_dir, self._purge = run_dir / "tb", None
        if enabled:
            run_dir.mkdir(parents=True, exist_ok=True)
            path = run_dir / "metrics.jsonl"
            kept = []
            if resume_step is not None and path.is_file():
                kept = [r for r in read_metrics(path) if r["step"] <= resume_step]
            self._jsonl = open(path, "w", encoding="utf-8")
            for record in kept:
                self._jsonl.write(json.dumps(record) + "\n")
            self._purge = resume_step + 1 if resume_step is not None else None

    def write(self, kind: str, step: int, values: Dict[str, object]) -> None:
        """One record: `kind` ('train', 'valid', 'test') at optimiser step `step`."""
        if not self.enabled:
            return
        record = {"kind": kind, "step": step, "time": round(time.time(), 3), **values}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        if self._tb is None:
            self._tb = _import_summary_writer()(str(self._tb_dir), purge_step=self._purge)
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self._tb.add_scalar(f"{kind}/{key}", value, step)

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            if self._tb is not None:
                self._tb.close()


def read_metrics(path: Path, kind: Optional[str] = None):
    """Records of a metrics.jsonl, optionally only those of one kind."""
    with open(path, encoding="utf-8") as fh:
        records = [json.loads(line) for line in fh if line.strip()]
    return [r for r in records if kind is None or r["kind"] == kind]
