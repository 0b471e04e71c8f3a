"""MindSpore's graph compile cache for a run, so that a restart or `--resume` does not recompile what an
earlier start of the same run compiled.

MindSpore (MS_COMPILER_CACHE_ENABLE, set_context(compile_cache_path)) reuses a compiled graph when the script's own
dependency files are unchanged; files on sys.path (mindrun itself, installed editable) are outside its check,
so an edited model could load a stale graph. The cache therefore lives in a directory named by a key of
everything that shapes the graphs: MindSpore's version and device target, mindrun's `model/` and `trainer/`
sources (Python and C++), and the
config without its run-control keys (steps, budgets, logging, checkpoint cadence, paths). Another key, another
directory; older ones are removed. Per rank: <run>/compile_cache/<key>/rank_<r>.
"""
import hashlib
import json
import os
import shutil
from pathlib import Path

import mindspore as ms

from trainer.config import RunConfig

ROOT = Path(__file__).resolve().parent.parent
SOURCES = {".py", ".cc", ".cpp", ".h"}  # Python and the CPU kernels' C++ (trainer/cpu/kernels)
RUN_CONTROL = {"out_dir", "max_epochs", "max_steps", "time_budget_minutes", "eval_every", "log_every",
               "best_metric", "progress", "device_peak_tflops", "resume", "save_every_steps", "save_every_minutes",
               "keep_last", "compile_cache"}


def cache_key(cfg: RunConfig, world_size: int) -> str:
    """16 hex digits naming what the compiled graphs depend on."""
    digest = hashlib.sha256(f"{ms.__version__} {ms.get_context('device_target')}".encode())
    config = cfg.to_dict()
    config["train"] = {k: v for k, v in config["train"].items() if k not in RUN_CONTROL}
    config.pop("name", None)
    digest.update(json.dumps([config, world_size], sort_keys=True, default=str).encode())
    for package in ("model", "trainer"):
        for path in sorted(p for p in (ROOT / package).rglob("*") if p.suffix in SOURCES):
            digest.update(str(path.relative_to(ROOT)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def use_compile_cache(cfg: RunConfig, run_dir: Path, rank: int, world_size: int) -> Path:
    """Point MindSpore's compile cache at this run's current key (removing other keys on rank 0); returns it."""
    root = run_dir / "compile_cache"
    key = cache_key(cfg, world_size)
    if rank == 0 and root.is_dir():
        for old in root.iterdir():
            if old.name != key:
                shutil.rmtree(old, ignore_errors=True)
    path = root / key / f"rank_{rank}"
    path.mkdir(parents=True, exist_ok=True)
    os.environ["MS_COMPILER_CACHE_ENABLE"] = "1"  # read at each compile; set_context's flag is deprecated (2.10)
    ms.set_context(compile_cache_path=str(path))
    return path
