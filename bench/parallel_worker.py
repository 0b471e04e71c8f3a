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
    args = parser.parse_args()

    import dataclasses

    import mindspore as ms

    from trainer.build import build_training
    from trainer.config import load_config
    from trainer.loop_tools import seed_everything
    from trainer.parallel.context import init_parallel, is_scheduler, select_backend, world_size_from_env
    from trainer.parallel.plan import make_plan

    ms.set_context(mode=ms.GRAPH_MODE)
    if is_scheduler():
        from mindspore.communication import init

        init()
        return 0
    if args.no_comm:
        stub_collectives()
    cfg = load_config(args.recipe, [f"parallel.model_parallel={args.model_parallel}", "model.dropout=0.0",
                                    f"data.max_tokens={args.rows * args.length}", f"data.buckets=[{args.length}]"])
    backend = select_backend()
    plan = make_plan(cfg, world_size_from_env(), backend, vocab_size=args.vocab)
    ctx = init_parallel(plan, backend)
    seed_everything(1)
    # --no_comm: the same layout and step without the data-parallel reduction (collectives stubbed)
    built = build_training(cfg, dataclasses.replace(ctx, dp_group=None) if args.no_comm else ctx,
                           args.vocab, args.vocab)
    built.optimizer.learning_rate.set_data(ms.Tensor(1e-4, ms.float32))
    step = built.step
    rng = np.random.default_rng(0)
    batch = [rng.integers(4, args.vocab, (args.rows, args.length)).astype(np.int32) for _ in range(3)]
    for _ in range(2):  # compile and warm up
        step(*batch)  # the global batch: the stepper takes this rank's rows
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step(*batch)
    seconds = (time.perf_counter() - t0) / args.steps
    tokens = 2 * args.rows * args.length  # source + target tokens of the global batch
    if ctx.is_main:
        Path(args.out).write_text(json.dumps({"step_s": seconds, "tokens_per_s": tokens / seconds,
                                              "plan": plan.describe(), "no_comm": args.no_comm,
                                              "cpus": sorted(os.sched_getaffinity(0))}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
