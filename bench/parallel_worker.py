"""One worker of bench/parallel: time the training step of a layout on synthetic batches.

Run by bench/parallel.py under `mindrun launch`. With --no-comm the collectives are replaced
by local stand-ins of the same shapes (wrong maths, same compute), so the step time without
communication can be compared with the real one.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np


def stub_collectives() -> None:
    """Swap the collective Cells for local ops with the same output shapes."""
    from mindspore import ops

    from model.parallel import mappings

    mappings.CopyToGroup.construct = lambda self, x: ops.identity(x)
    mappings.CopyToGroup.bprop = lambda self, x, out, dout: (dout,)
    mappings.ReduceFromGroup.construct = lambda self, x: ops.identity(x)
    mappings.GatherLastDim.construct = lambda self, x: ops.tile(x, (1, self.size))
    mappings.GatherLastDim.bprop = lambda self, x, out, dout: (dout[..., :x.shape[-1]],)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--recipe", default="small")
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--length", type=int, default=32)
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--model-parallel", type=int, default=1)
    parser.add_argument("--no-comm", action="store_true")
    parser.add_argument("--out", required=True)
    parser.add_argument("--set", action="append", default=[], help="config override (repeatable)")
    parser.add_argument("--accumulation", type=int, default=1, help="batches per update (gradient accumulation)")
    parser.add_argument("--real", action="store_true", help="the recipe's own (packed) Multi30k batches, cycled")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()

    import dataclasses

    import mindspore as ms

    from trainer.build import build_training
    from trainer.config import load_config
    from trainer.loop.tools import seed_everything
    from trainer.parallel.context import init_parallel, is_scheduler, select_backend, world_size_from_env
    from trainer.parallel.plan import make_plan

    ms.set_context(mode=ms.GRAPH_MODE)
    if is_scheduler():
        from mindspore.communication import init

        init()
        return 0
    if args.no_comm:
        stub_collectives()
    shape = [] if args.real else [f"data.max_tokens={args.rows * args.length}", f"data.buckets=[{args.length}]"]
    sets = [f"parallel.model_parallel={args.model_parallel}", "model.dropout=0.0",
            f"train.gradient_accumulation_steps={args.accumulation}", *shape, *args.set]
    if args.data_dir:
        sets.append(f"data.dir={args.data_dir}")
    cfg = load_config(args.recipe, sets)
    if args.real:
        from trainer.dataset import prepare
        from trainer.train import training_batches

        corpus = prepare(cfg.data)
        split = corpus.splits["train"]
        batcher, collate = training_batches(cfg, split)
        batches = [collate(b, split.src_ids, split.tgt_ids)
                   for _, b in zip(range(4 * args.accumulation), batcher.iterate(0))]
        args.vocab = len(corpus.tgt_vocab)
    backend = select_backend()
    plan = make_plan(cfg, world_size_from_env(), backend, vocab_size=args.vocab)
    ctx = init_parallel(plan, backend)
    seed_everything(1)
    # --no_comm: the same layout and step without the data-parallel reduction (collectives stubbed)
    built = build_training(cfg, dataclasses.replace(ctx, dp_group=None) if args.no_comm else ctx,
                           args.vocab, args.vocab)
    built.optimizer.learning_rate.set_data(ms.Tensor(1e-4, ms.float32))
    step = built.step
    if not args.real:
        rng = np.random.default_rng(0)
        batches = [[rng.integers(4, args.vocab, (args.rows, args.length)).astype(np.int32) for _ in range(3)]]
    k = args.accumulation
    updates = [batches[(i * k) % len(batches):(i * k) % len(batches) + k] for i in range(len(batches) // k)]
    counts = [sum(int((b[0] != 0).sum()) + int((b[2] != 0).sum()) for b in group) for group in updates]  # src + tgt
    for group in updates[:2]:  # compile and warm up (the stepper takes this rank's rows of each global batch)
        step.update(group)
    t0 = time.perf_counter()
    for i in range(args.steps):
        step.update(updates[i % len(updates)])
    elapsed = time.perf_counter() - t0
    seconds = elapsed / args.steps
    tokens = sum(counts[i % len(updates)] for i in range(args.steps))
    if ctx.is_main:
        Path(args.out).write_text(json.dumps({"step_s": seconds, "tokens_per_s": tokens / elapsed,
                                              "plan": plan.describe(), "no_comm": args.no_comm,
                                              "cpus": sorted(os.sched_getaffinity(0))}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
