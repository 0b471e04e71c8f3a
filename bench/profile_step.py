"""Where the training step's time goes: MindSpore's profiler over a few steps of the `small` model.

    python -m bench.profile_step --rows 128 --length 16 [--set model.dropout=0.0]
    python -m bench.profile_step --rows 32 --length 64 --packed 3    # packed rows, 3 sentences each

Compiles the step, runs --warmup steps, profiles --steps steps, and prints the operator
types by total time (from the profiler's CPU op statistics), so an optimisation starts
from a measurement. Output goes to bench/out/profile/<name>/.
"""
import argparse
import csv
import shutil
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=128)
    parser.add_argument("--length", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--packed", type=int, default=0, help="pack this many equal sentences a row (0: padded)")
    parser.add_argument("--set", action="append", default=[], dest="sets")
    parser.add_argument("--name", default="step")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()

    import mindspore as ms

    from trainer.build import build_training
    from trainer.config import load_config
    from trainer.parallel.context import ParallelContext, select_backend
    from trainer.parallel.plan import make_plan

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_seed(0)
    cfg = load_config("small", args.sets)
    backend = select_backend()
    built = build_training(cfg, ParallelContext(make_plan(cfg, 1, backend), backend), args.vocab, args.vocab)
    built.optimizer.learning_rate.set_data(ms.Tensor(1e-4, ms.float32))
    step = built.step
    rng = np.random.default_rng(0)
    batch = [rng.integers(4, args.vocab, (args.rows, args.length)).astype(np.int32) for _ in range(3)]
    if args.packed:  # segment ids 1..k and positions restarting at each segment, the same on both sides
        seg = np.arange(args.length) * args.packed // args.length
        pos = np.arange(args.length) - np.searchsorted(seg, seg)
        seg, pos = (np.tile(a.astype(np.int32), (args.rows, 1)) for a in (seg + 1, pos))
        batch += [seg, seg, pos, pos]
    for _ in range(args.warmup):
        step(*batch)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step(*batch)
    plain = (time.perf_counter() - t0) / args.steps
    print(f"step {plain * 1000:.0f} ms without the profiler; "
          f"{2 * args.rows * args.length / plain:.0f} tokens/s (every slot a token)")

    out = ROOT / "bench" / "out" / "profile" / args.name
    shutil.rmtree(out, ignore_errors=True)  # the table is read from the first CSV found: not an older run's
    from mindspore.profiler import Profiler

    profiler = Profiler(output_path=str(out))
    for _ in range(args.steps):
        step(*batch)
    profiler.analyse()
    table = _op_table(out)
    if not table:
        print(f"no op statistics found under {out}")
        return 1
    total = sum(table.values())
    print(f"profiled op time per step: {total / args.steps:.0f} ms")
    for name, ms_ in sorted(table.items(), key=lambda kv: -kv[1])[:args.top]:
        print(f"{name:40s} {ms_ / args.steps:8.1f} ms/step {100 * ms_ / total:5.1f} %")
    return 0


def _op_table(out: Path):
    """op type -> total ms, from the first CPU op statistics CSV the profiler wrote."""
    for path in sorted(out.rglob("*.csv")):
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows:
            continue
        keys = rows[0].keys()
        type_key = next((k for k in keys if k.lower().replace(" ", "_") in ("op_type", "type")), None)
        time_key = next((k for k in keys if "total" in k.lower() and ("time" in k.lower() or "(ms)" in k.lower())),
                        None)
        if type_key and time_key:
            table = defaultdict(float)
            for r in rows:
                try:
                    table[r[type_key]] += float(r[time_key])
                except ValueError:
                    pass
            print(f"(from {path.relative_to(out)}: {type_key} / {time_key})")
            return table
    return {}


if __name__ == "__main__":
    sys.exit(main())
