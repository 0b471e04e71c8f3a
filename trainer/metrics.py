"""Run metrics to metrics.jsonl (one JSON object a line) and to TensorBoard via tensorboardX."""
import json
import time
from pathlib import Path
from typing import Dict, Optional

from tensorboardX import SummaryWriter


class MetricsLog:
    """Writes records to <run>/metrics.jsonl and scalars to <run>/tb (rank 0 only writes).

    A new run starts a new metrics.jsonl (`append=False`); a resumed one appends.
    """

    def __init__(self, run_dir: Path, enabled: bool = True, append: bool = False):
        self.enabled = enabled
        self._jsonl = None
        self._tb: Optional[SummaryWriter] = None
        if enabled:
            run_dir.mkdir(parents=True, exist_ok=True)
            self._jsonl = open(run_dir / "metrics.jsonl", "a" if append else "w", encoding="utf-8")
            self._tb = SummaryWriter(str(run_dir / "tb"))

    def write(self, kind: str, step: int, values: Dict[str, object]) -> None:
        """One record: `kind` ('train', 'valid', 'test') at optimiser step `step`."""
        if not self.enabled:
            return
        record = {"kind": kind, "step": step, "time": round(time.time(), 3), **values}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self._tb.add_scalar(f"{kind}/{key}", value, step)

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tb.close()


def read_metrics(path: Path, kind: Optional[str] = None):
    """Records of a metrics.jsonl, optionally only those of one kind."""
    with open(path, encoding="utf-8") as fh:
        records = [json.loads(line) for line in fh if line.strip()]
    return [r for r in records if kind is None or r["kind"] == kind]
