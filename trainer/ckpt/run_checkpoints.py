"""When and what a run saves: sharded step directories (trainer/ckpt), the best and the latest.

trainer/ckpt writes and reads checkpoints; this module is the policy around them for one run:
what goes into the manifest beside the tensors (position, best record, RNG scheme, config and
its hash, versions), which save is the best, and what a resume restores.
"""
import hashlib
import json
import platform
import random
from pathlib import Path
from typing import Callable, Dict, Optional

import numpy as np

from trainer.ckpt.layout import ShardLayout
from trainer.ckpt.store import CheckpointStore
from trainer.parallel.context import ParallelContext
from trainer.parallel.host_sum import world_sum


def versions() -> Dict[str, str]:
    """mindrun's, MindSpore's and Python's versions, for a manifest."""
    import importlib.metadata

    import mindspore

    try:
        mindrun = importlib.metadata.version("mindrun")
    except importlib.metadata.PackageNotFoundError:
        mindrun = "unknown"
    return {"mindrun": mindrun, "mindspore": mindspore.__version__, "python": platform.python_version()}


def config_hash(config: Dict) -> str:
    """SHA-256 of a config's canonical JSON."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def host_rng_state() -> Dict:
    """Python's and NumPy's global RNG states as JSON (nothing in a checkpoint is pickled)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {"numpy": {"kind": kind, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss),
                      "cached_gaussian": float(gauss)},
            "python": {"version": version, "state": list(internal), "gauss_next": gauss_next}}


def restore_host_rng(state: Dict) -> None:
    n, p = state["numpy"], state["python"]
    np.random.set_state((n["kind"], np.array(n["keys"], np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))


class RunCheckpoints:
    """The checkpoints of one run directory, for one rank (every rank calls save and resume together)."""

    def __init__(self, ckpt_dir: Path, config: Dict, best_metric: str, optimizer, layout: ShardLayout,
                 ctx: ParallelContext, keep_last: int = 3, warn: Callable[[str], None] = print):
        self.store = CheckpointStore(ckpt_dir, layout, ctx.plan.world_size, ctx.is_main, keep_last,
                                     warn if ctx.is_main else (lambda _: None), world_sum(ctx))
        self.config, self.best_metric, self.optimizer = config, best_metric, optimizer
        self.seed = int(config.get("train", {}).get("seed", 0))
        self.best_value: Optional[float] = None
        self.best: Dict[str, float] = {}  # the best validation record, with its step
        self._versions = versions()

    @property
    def dir(self) -> Path:
        return self.store.root

    @property
    def last(self) -> Path:
        return self.store.root / "latest"

    @property
    def best_path(self) -> Path:
        return self.store.root / "best"

    def resume(self) -> Optional[Dict]:
        """Restore the newest complete checkpoint (weights, Adam state, counters, host RNGs) into the
        optimizer, resharding to this run's layout; return its position, or None if there is none."""
        found = self.store.agree_on_resume()
        if found is None:
            legacy = self.store.root / "last.ckpt"
            if legacy.is_file():
                self.store.warn(f"warning: {legacy} is a single-file checkpoint of an older mindrun, which does not "
                                f"resume: starting afresh (it still evaluates: mindrun evaluate --checkpoint {legacy})")
            return None
        directory, manifest = found
        self.store.load(self.optimizer, directory, manifest)
        best = manifest.get("best") or {}
        if best.get("value") is not None:
            self.best_value, self.best = float(best["value"]), dict(best["record"])
        rng = manifest.get("rng", {})
        if "host" in rng:
            restore_host_rng(rng["host"])
        return {**manifest["position"], "directory": str(directory)}

    def init_weights(self, source: str) -> Path:
        """Set the weights (not the optimizer's moments, not the position) from another run's newest checkpoint
        (`train.init_from`: a run directory, its checkpoints/, a pointer or a step directory), resliced to this
        run's layout; returns the step directory read."""
        from trainer.ckpt.single_file import CheckpointError
        from trainer.ckpt.store import load_tensors
        from trainer.ckpt.tools import open_verified

        try:
            directory, manifest = open_verified(Path(source))  # a run directory resolves to its latest
            load_tensors(list(self.optimizer.parameters), self.store.layout, directory, manifest, kinds=("weight",))
        except (CheckpointError, FileNotFoundError) as exc:
            raise CheckpointError(f"train.init_from={source}: {exc}") from None
        return directory

    def improves(self, value: float) -> bool:
        """Whether a validation value beats the best so far (higher BLEU, or lower loss or perplexity)."""
        if self.best_value is None:
            return True
        return value > self.best_value if self.best_metric == "bleu" else value < self.best_value

    def after_validation(self, step: int, record: Dict[str, float], position: Dict) -> bool:
        """Update the best record and save step_<step> (the new `best` if it improved); return whether it did."""
        value = record[self.best_metric]
        improved = self.improves(value)
        if improved:
            self.best_value, self.best = value, {"step": step, **record}
        self.save(step, position, best=improved)
        return improved

    def save(self, step: int, position: Dict, best: bool = False) -> Path:
        """Commit step_<step> with the training position (all ranks together); returns its directory."""
        extra = {"best": {"metric": self.best_metric, "value": self.best_value, "record": self.best},
                 "rng": {"dropout": {"scheme": "counter hash of (train.seed, data-parallel rank, step, "
                                               "micro-batch): model/dropout.py", "seed": self.seed},
                         "host": host_rng_state()},
                 "config_sha256": config_hash(self.config), "versions": self._versions}
        return self.store.save(step, self.optimizer, position, self.config, extra, best=best)
