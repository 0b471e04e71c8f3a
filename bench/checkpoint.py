"""bench/checkpoint: save and load time and size of a sharded checkpoint, against one training step.

    python -m bench.checkpoint --data-dir ../shared/data/multi30k --rounds 5   # from the repository root

For `small` and `base` (each recipe's own batch, real Multi30k pairs packed in rows of 64,
the notebook's word vocabularies as in bench/throughput, standalone on this CPU): the median
time of a training step, of a save (trainer/ckpt's commit protocol: shard, fsync, hash,
manifest, pointers), and of a resume's load (hash every file, then read every tensor back
into the optimizer), and the checkpoint's size. A save happens at every validation
(train.eval_every steps, or once an epoch when that is 0), so its share of training time
is save / (step x that interval).
Results: bench/out/checkpoint/result.json and a Markdown table.
"""
import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path


def epoch_updates(pairs, max_tokens: int, length: int) -> int:
    """Packed batches in one epoch of the training pairs (the save interval of a recipe that
    validates once an epoch)."""
    import numpy as np

    from trainer.data.packing import PackedBatcher

    s_len = np.array([len(s) for s, _ in pairs])
    t_len = np.array([len(t) + 1 for _, t in pairs])
    keep = (s_len <= length) & (t_len <= length)
    return len(PackedBatcher(s_len[keep], t_len[keep], length, max_tokens, seed=0).epoch(0))


def measure(recipe: str, data_dir: str, rounds: int, scratch: Path) -> dict:
    import mindspore as ms

    from bench.throughput import COURSE_VOCABS, MINDRUN_PAD, PACK_LENGTH, course_pairs
    from bench.throughput_batches import real_packed
    from trainer.build import build_training
    from trainer.ckpt.store import CheckpointStore
    from trainer.config import load_config
    from trainer.parallel.context import ParallelContext, select_backend
    from trainer.parallel.plan import make_plan

    ms.set_context(mode=ms.GRAPH_MODE)
    cfg = load_config(recipe, ["model.share_embeddings=false"])
    backend = select_backend()
    built = build_training(cfg, ParallelContext(make_plan(cfg, 1, backend), backend), *COURSE_VOCABS)
    pairs = course_pairs(data_dir)
    batches = real_packed(pairs, cfg.data.max_tokens, PACK_LENGTH, MINDRUN_PAD, rounds + 1)
    interval = cfg.train.eval_every or epoch_updates(pairs, cfg.data.max_tokens, PACK_LENGTH)
    built.step.update([batches[0][0]], 1, 1e-4)  # compiles
    steps = []
    for i in range(rounds):
        t0 = time.perf_counter()
        built.step.update([batches[1 + i][0]], 2 + i, 1e-4)
        steps.append(time.perf_counter() - t0)
    root = scratch / recipe
    store = CheckpointStore(root, built.layout, keep_last=2, warn=lambda _: None)
    saves, loads = [], []
    for i in range(rounds):
        t0 = time.perf_counter()
        directory = store.save(i + 1, built.optimizer, {"step": i + 1}, cfg.to_dict())
        saves.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        found = store.newest_verified()
        store.load(built.optimizer, *found)
        loads.append(time.perf_counter() - t0)
    size = sum(p.stat().st_size for p in directory.iterdir())
    step, save, load = (statistics.median(x) for x in (steps, saves, loads))
    params = sum(p.size for p in built.optimizer.parameters)
    shutil.rmtree(root, ignore_errors=True)
    return {"recipe": recipe, "parameters": params, "max_tokens": cfg.data.max_tokens, "step_s": step,
            "save_s": save, "load_s": load, "size_mb": size / 2 ** 20, "save_per_step": save / step,
            "load_per_step": load / step, "save_interval_steps": interval,
            "save_interval": f"train.eval_every={cfg.train.eval_every}" if cfg.train.eval_every else "an epoch",
            "save_share_at_default_interval": save / (step * interval),
            "raw": {"step_s": steps, "save_s": saves, "load_s": loads}}


def main() -> int:
    from bench.throughput import machine

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data/multi30k")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--recipes", nargs="+", default=["small", "base"])
    parser.add_argument("--out", default="bench/out/checkpoint")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        results = [measure(r, args.data_dir, args.rounds, Path(scratch)) for r in args.recipes]
    record = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "command": " ".join(sys.argv),
              "rounds": args.rounds, "results": results}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps(record, indent=1))
    print(f"\n{record['machine']}, {record['date']}, medians of {args.rounds}\n")
    print("| recipe | parameters | step (s) | save (s) | load (s) | size (MB) | save / step | load / step "
          "| save's share at the default interval |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['recipe']} | {r['parameters'] / 1e6:.1f} M | {r['step_s']:.2f} | {r['save_s']:.2f} | "
              f"{r['load_s']:.2f} | {r['size_mb']:.0f} | {r['save_per_step']:.2f}x | {r['load_per_step']:.2f}x | "
              f"{100 * r['save_share_at_default_interval']:.2f} % ({r['save_interval']}, "
              f"{r['save_interval_steps']} steps) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
