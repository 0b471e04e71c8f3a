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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


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

    import mindspore as ms
    from mindspore import nn

    from model.loss import LabelSmoothedCrossEntropy
    from model.parallel.layout import apply_hybrid
    from trainer.config import load_config
    from trainer.parallel.context import init_parallel, is_scheduler, world_size_from_env
    from trainer.parallel.data import shard_rows
    from trainer.parallel.plan import make_plan
    from trainer.run_dir import build_model, kernel_dir
    from trainer.step import TrainStep
    from trainer.train import seed_everything

    ms.set_context(mode=ms.GRAPH_MODE)
    if is_scheduler():
        from mindspore.communication import init

        init()
        return 0
    if args.no_comm:
        stub_collectives()
    cfg = load_config(args.recipe, [f"parallel.model_parallel={args.model_parallel}", "model.dropout=0.0",
                                    f"data.max_tokens={args.rows * args.length}", f"data.buckets=[{args.length}]"])
    plan = make_plan(cfg, world_size_from_env(), "CPU", vocab_size=args.vocab)
    ctx = init_parallel(plan)
    seed_everything(1)
    model = build_model(cfg, args.vocab, args.vocab)
    layout = apply_hybrid(model, ctx.mp_group, ctx.mp_rank, plan.model_parallel)
    optimizer = nn.Adam(model.trainable_params(), learning_rate=1e-4)
    dp_group = None if args.no_comm else ctx.dp_group
    step = TrainStep(model, LabelSmoothedCrossEntropy(0.1, 0), optimizer, 1.0, dp_group,
                     None if args.no_comm else ctx.mp_group, plan.model_parallel, layout.shard_axis,
                     kernel_dir=kernel_dir(cfg))
    rng = np.random.default_rng(0)
    batch = [rng.integers(4, args.vocab, (args.rows, args.length)).astype(np.int32) for _ in range(3)]
    src, tin, tout = (ms.Tensor(a) for a in shard_rows(batch, ctx))
    for _ in range(2):  # compile and warm up
        step(src, tin, tout)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        out = step(src, tin, tout)
    out[0].asnumpy()
    seconds = (time.perf_counter() - t0) / args.steps
    tokens = 2 * args.rows * args.length  # source + target tokens of the global batch
    if ctx.is_main:
        Path(args.out).write_text(json.dumps({"step_s": seconds, "tokens_per_s": tokens / seconds,
                                              "plan": plan.describe(), "no_comm": args.no_comm,
                                              "cpus": sorted(os.sched_getaffinity(0))}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
