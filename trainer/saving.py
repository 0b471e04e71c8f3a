"""When and what a run saves: best.ckpt (best validation metric) and last.ckpt (resume point).

trainer/checkpoint.py writes and reads one file; this module is the policy around it: which
file after a validation or a signal, what metadata goes with it, how a resume reads it back.
"""
from pathlib import Path
from typing import Dict, Optional

from trainer import checkpoint
from trainer.config import ConfigError
from trainer.parallel.context import ParallelContext
from trainer.parallel.data import gather_full_params


class RunCheckpoints:
    """The checkpoints of one run directory, for one rank (rank 0 writes; all ranks gather shards)."""

    def __init__(self, ckpt_dir: Path, best_metric: str, model, optimizer, shard_axis: Dict[str, int],
                 ctx: ParallelContext):
        self.dir = Path(ckpt_dir)
        self.best_metric = best_metric
        # the optimizer holds the weights, Adam's moments and its step count: the training state
        self.model, self.optimizer, self.shard_axis, self.ctx = model, optimizer, shard_axis, ctx
        self.best_value: Optional[float] = None
        self.best: Dict[str, float] = {}  # the best validation record, with its step

    @property
    def last(self) -> Path:
        return self.dir / "last.ckpt"

    @property
    def best_path(self) -> Path:
        return self.dir / "best.ckpt"

    def resume(self) -> Optional[Dict]:
        """Load last.ckpt (weights, Adam state) into the optimizer; return its position metadata, or None if absent."""
        if not self.last.is_file():
            return None
        if self.ctx.plan.model_parallel > 1:
            raise ConfigError("train.resume with parallel.model_parallel > 1 needs sharded checkpoints, which "
                              "are not built yet; resume with the same data_parallel and model_parallel=1")
        meta = checkpoint.load_into(self.optimizer, self.last)
        if self.best_path.is_file():  # best.ckpt's own metadata, in case a crash fell between the two saves
            best_meta = checkpoint.read_meta(self.best_path)
            self.best_value, self.best = best_meta["best_value"], {"step": int(best_meta["best_step"])}
        return meta

    def improves(self, value: float) -> bool:
        """Whether a validation value beats the best so far (higher BLEU, or lower loss)."""
        if self.best_value is None:
            return True
        return value > self.best_value if self.best_metric == "bleu" else value < self.best_value

    def after_validation(self, step: int, record: Dict[str, float], position: Dict) -> bool:
        """Update the best record, write best.ckpt if it improved and last.ckpt always; return whether it improved."""
        value = record[self.best_metric]
        improved = self.improves(value)
        if improved:
            self.best_value, self.best = value, {"step": step, **record}
        self._save(improved, self._meta(position))
        return improved

    def save_last(self, position: Dict) -> Path:
        """Write last.ckpt only (the fast save on a signal)."""
        self._save(False, self._meta(position))
        return self.last

    def _meta(self, position: Dict) -> Dict:
        best = float(self.best_value) if self.best_value is not None else float("nan")
        return {**position, "best_value": best, "best_step": self.best.get("step", 0)}

    def _save(self, best: bool, meta: Dict) -> None:
        """best.ckpt (weights) if `best`, and last.ckpt (with Adam state unless the model is split).

        With a split model every rank takes part in gathering the shards; rank 0 writes.
        """
        if self.shard_axis:
            full = gather_full_params(self.model, self.shard_axis, self.ctx)
            if self.ctx.is_main:
                if best:
                    checkpoint.save(full, self.best_path, meta)
                checkpoint.save(full, self.last, meta)
            return
        if self.ctx.is_main:
            if best:
                checkpoint.save(self.model, self.best_path, meta)
            checkpoint.save(self.optimizer, self.last, meta)
