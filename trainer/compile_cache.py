"""MindSpore's graph compile cache for a run, so that a restart or `--resume` does not recompile what an
earlier start of the same run compiled.

MindSpore (MS_COMPILER_CACHE_ENABLE, set_context(compile_cache_path)) reuses a compiled graph when the script's own
dependency files are unchanged; files on sys.path (mindrun itself, installed editable) are outside its check,
so an edited model could load a stale graph. The cache therefore lives in a directory named by a key of
everything that shapes the graphs: MindSpore's version and device target, mindrun's `model/` and `trainer/`
sources (Python and C++), and the
config without its run-control keys (steps, budgets, logging, checkpoint cadence, paths), and what the start decided
that the config does not fix (the gradient sums through shared memory or AllReduce, MindSpore's cluster joined or
not). Another key, another directory; older ones are removed. Per rank: <run>/compile_cache/<key>/rank_<r>.

Across runs: a run that ends normally publishes its graphs to mindrun's cache directory
(<cache>/compile/<key>/rank_<r>, written under a temporary name and renamed), and a new run whose own cache is
empty starts from a copy of them, so a second run of a configuration compiled before (another out_dir, budget or
step count) starts like a restart: the README's job reached its first update in 8.4 s instead of 19.2 s. Each
run writes only its own directory (no two jobs write one cache); the newest SHARED_KEEP keys are kept.
"""
import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Iterator

import mindspore as ms

from trainer.config import RunConfig
from trainer.data.multi30k import cache_root

ENABLE = "MS_COMPILER_CACHE_ENABLE"
SHARED_KEEP = 8  # configurations whose graphs the shared cache keeps (the newest by use)

ROOT = Path(__file__).resolve().parent.parent
SOURCES = {".py", ".cc", ".cpp", ".h"}  # Python and the CPU kernels' C++ (trainer/cpu/kernels)
RUN_CONTROL = {"out_dir", "max_epochs", "max_steps", "time_budget_minutes", "eval_every", "validate_epochs",
               "log_every", "best_metric", "progress", "device_peak_tflops", "resume", "save_every_steps", "save_every_minutes",
               "keep_last", "compile_cache"}


def cache_key(cfg: RunConfig, world_size: int, variant: str = "") -> str:
    """16 hex digits naming what the compiled graphs depend on. `variant`: what the config does not fix but the
    graphs hold, decided at start (whether the gradient sums go through shared memory or AllReduce, and whether the
    job joined MindSpore's cluster: a full /dev/shm changes it between two starts of one run)."""
    digest = hashlib.sha256(f"{ms.__version__} {ms.get_context('device_target')} {variant}".encode())
    config = cfg.to_dict()
    config["train"] = {k: v for k, v in config["train"].items() if k not in RUN_CONTROL}
    config.pop("name", None)
    digest.update(json.dumps([config, world_size], sort_keys=True, default=str).encode())
    for package in ("model", "trainer"):
        for path in sorted(p for p in (ROOT / package).rglob("*") if p.suffix in SOURCES):
            digest.update(str(path.relative_to(ROOT)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


@contextlib.contextmanager
def compile_cache(cfg: RunConfig, run_dir: Path, rank: int, world_size: int, variant: str = "") -> Iterator[Path]:
    """Within the block, MindSpore's compile cache points at this run's current key (other keys removed on rank
    0); yields that directory. MindSpore 2.10 turns the cache on by the environment (MS_COMPILER_CACHE_ENABLE;
    set_context's flag is deprecated), read at each compile and inherited by child processes: the block
    restores it, so that nothing compiled after the run (a test process's next run, an evaluate it starts)
    reads a cache meant for this one."""
    root = run_dir / "compile_cache"
    key = cache_key(cfg, world_size, variant)
    if rank == 0 and root.is_dir():
        for old in root.iterdir():
            if old.name != key:
                shutil.rmtree(old, ignore_errors=True)
    path = root / key / f"rank_{rank}"
    path.mkdir(parents=True, exist_ok=True)
    shared = cache_root(cfg.data.cache_dir) / "compile" / key / f"rank_{rank}"
    seeded = seed(path, shared)
    if seeded and rank == 0:
        print(f"compile cache: starting from the graphs an earlier run of this configuration compiled "
              f"({shared.parent})", flush=True)
    before = os.environ.get(ENABLE)
    os.environ[ENABLE] = "1"
    ms.set_context(compile_cache_path=str(path))
    try:
        yield path
    finally:
        if before is None:
            os.environ.pop(ENABLE, None)
        else:
            os.environ[ENABLE] = before
    publish(path, shared)
    if rank == 0:
        prune(shared.parent.parent, SHARED_KEEP)


def _has_files(path: Path) -> bool:
    return path.is_dir() and any(p.is_file() for p in path.rglob("*"))


def seed(path: Path, shared: Path) -> bool:
    """Copy the shared graphs of this key into the run's empty cache directory; True if it did."""
    if _has_files(path) or not _has_files(shared):
        return False
    try:
        shutil.copytree(shared, path, dirs_exist_ok=True)
        os.utime(shared.parent)  # used: kept longer by `prune`
    except OSError:  # a shared copy being pruned by another run: compile instead
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True, exist_ok=True)
        return False
    return True


def publish(path: Path, shared: Path) -> None:
    """Offer the run's graphs to later runs: copied under a temporary name, then renamed into place (an existing
    copy wins; nothing is written when the cache directory is not writable)."""
    if not _has_files(path) or shared.exists():
        return
    tmp = shared.parent / f".{shared.name}-{os.getpid()}.tmp"
    try:
        shared.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(path, tmp)
        os.rename(tmp, shared)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)


def prune(root: Path, keep: int) -> None:
    """Remove all but the `keep` most recently used keys under `root`."""
    if not root.is_dir():
        return
    keys = sorted((d for d in root.iterdir() if d.is_dir()), key=lambda d: d.stat().st_mtime, reverse=True)
    for old in keys[keep:]:
        shutil.rmtree(old, ignore_errors=True)
