"""bench/precision: tokens/s and peak memory of mixed precision and gradient accumulation on the CPU.

    python -m bench.precision --data-dir ../shared/data/multi30k --rounds 3   # from the repository root

The `small` model (untied embeddings, the notebook's word vocabularies as in bench/throughput)
on real Multi30k pairs packed in rows of 64, each contestant in its own process:
  O0            float32, the CPU speed-ups on (what `small` runs): the baseline
  O0_plain      float32 with the CPU speed-ups off: what float16 is up against, op for op
  O1_fp16       mindspore.amp O1 (Dense/MatMul in float16), dynamic loss scaling
  O2_fp16       O2 (all but LayerNorm in float16, loss in float32), dynamic loss scaling
  k1_8192       float32, one 8,192-token batch per update ([128, 64])
  k4_2048       float32, four accumulated 2,048-token micro-batches per update: the same
                tokens per update as k1_8192
Windows are counted in micro-batches of 2,048 tokens (an 8,192-token batch counts as four),
so every contestant times the same tokens. With --rounds N the contestants run interleaved N
times; a contestant's figure is the median over rounds, a ratio the median of per-round
ratios against the round's own baseline. Peak memory is the worker process's maximum RSS.
Results: bench/out/precision/result.json and a Markdown table.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SELF = [sys.executable, "-m", "bench.precision"]

CONTESTANTS = {  # name: (config overrides, micro-batches per update, tokens per batch)
    "O0": ([], 1, 2048),
    "O0_plain": (["train.cpu_backward=false", "train.fused_loss=false"], 1, 2048),
    "O1_fp16": (["precision.level=O1"], 1, 2048),
    "O2_fp16": (["precision.level=O2"], 1, 2048),
    "k1_8192": ([], 1, 8192),
    "k4_2048": (["train.gradient_accumulation_steps=4"], 4, 2048),
}


def worker(args) -> int:
    import mindspore as ms

    from bench.throughput import COURSE_VOCABS, MINDRUN_PAD, PACK_LENGTH, course_pairs, model_flops
    from bench.throughput_batches import real_packed, tokens
    from trainer.build import build_training
    from trainer.config import load_config
    from trainer.parallel.context import ParallelContext, select_backend
    from trainer.parallel.plan import make_plan

    sets, k, batch_tokens = CONTESTANTS[args.worker]
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_seed(0)
    cfg = load_config("small", ["model.share_embeddings=false", *sets])
    backend = select_backend()
    built = build_training(cfg, ParallelContext(make_plan(cfg, 1, backend), backend), *COURSE_VOCABS)
    built.optimizer.learning_rate.set_data(ms.Tensor(1e-4, ms.float32))
    micro_per_window = args.micro_batches
    per_update = k * batch_tokens // 2048  # 2,048-token micro-batches an update stands for
    updates_per_window = micro_per_window // per_update
    count = (args.windows * updates_per_window + 1) * k
    batches = real_packed(course_pairs(args.data_dir), batch_tokens, PACK_LENGTH, MINDRUN_PAD, count)
    updates = [batches[i:i + k] for i in range(0, len(batches), k)]
    t0 = time.perf_counter()
    built.step.update([arrays for arrays, _ in updates[0]])  # compiles
    warmup_s = time.perf_counter() - t0
    rates, flops, skipped = [], [], 0
    for w in range(args.windows):
        window = updates[1 + w * updates_per_window:1 + (w + 1) * updates_per_window]
        t0 = time.perf_counter()
        for update in window:
            skipped += not built.step.update([arrays for arrays, _ in update]).finite
        seconds = time.perf_counter() - t0
        twins = [twin for update in window for _, twin in update]
        rates.append(sum(tokens(t, MINDRUN_PAD) for t in twins) / seconds)
        flops.append(sum(model_flops(t, MINDRUN_PAD, COURSE_VOCABS[1]) for t in twins) / seconds / 1e9)
    record = {"tokens_per_s": rates, "gflops": flops, "warmup_s": round(warmup_s, 1), "skipped_steps": skipped,
              "loss_scale": built.step.scaler.scale,
              "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
    Path(args.out).write_text(json.dumps(record))
    return 0


def run_worker(name: str, args, out: Path, round_: int) -> dict:
    result = out / f"{name}_r{round_}.json"
    cmd = [*SELF, "--worker", name, "--windows", str(args.windows), "--micro-batches", str(args.micro_batches),
           "--data-dir", args.data_dir, "--out", str(result)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
    record = json.loads(result.read_text())
    record["median_tokens_per_s"] = statistics.median(record["tokens_per_s"])
    print(f"round {round_}: {name}: {record['median_tokens_per_s']:.0f} tokens/s, "
          f"peak {record['peak_rss_mb']} MB", file=sys.stderr)
    return record


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("MINDRUN_DATA_DIR", "../shared/data/multi30k"))
    parser.add_argument("--windows", type=int, default=3, help="timed windows per contestant (median reported)")
    parser.add_argument("--micro-batches", type=int, default=8, help="2,048-token micro-batches per window")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--only", nargs="*", choices=list(CONTESTANTS), help="contestants (default: all)")
    parser.add_argument("--out", default="bench/out/precision")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.micro_batches % 4:
        parser.error("--micro-batches must be a multiple of 4 (an 8,192-token update counts as four)")
    if args.worker:
        return worker(args)
    from bench.throughput import machine

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = args.only or list(CONTESTANTS)
    rounds = [{name: run_worker(name, args, out, r) for name in names} for r in range(args.rounds)]
    summary = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "rounds": args.rounds, "results": {}}
    base = "O0" if "O0" in names else names[0]
    print(f"\n{summary['machine']}, {summary['date']}, median of {args.rounds} round(s)\n")
    print("| contestant | tokens/s | vs O0 | peak RSS | warm-up | skipped | per round |")
    print("|---|---|---|---|---|---|---|")
    for name in names:
        per_round = [rnd[name]["median_tokens_per_s"] for rnd in rounds]
        ratio = statistics.median(rnd[name]["median_tokens_per_s"] / rnd[base]["median_tokens_per_s"]
                                  for rnd in rounds)
        peak = max(rnd[name]["peak_rss_mb"] for rnd in rounds)
        warm = statistics.median(rnd[name]["warmup_s"] for rnd in rounds)
        skipped = max(rnd[name]["skipped_steps"] for rnd in rounds)
        summary["results"][name] = {"median_tokens_per_s": statistics.median(per_round), "ratio_vs_O0": ratio,
                                    "peak_rss_mb": peak, "warmup_s": warm, "rounds_tokens_per_s": per_round,
                                    "skipped_steps": skipped}
        print(f"| {name} | {statistics.median(per_round):,.0f} | {ratio:.2f}x | {peak:,} MB | {warm} s | "
              f"{skipped} | {' / '.join(f'{x:,.0f}' for x in per_round)} |")
    (out / "result.json").write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
