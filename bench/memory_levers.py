"""bench/memory_levers: peak host memory and throughput with and without the memory levers on this CPU.

    python -m bench.memory_levers --data-dir ../shared/data/multi30k [--cases small_recompute,small_shard,...]

Each case trains a few updates in fresh processes (standalone through `mindrun train`, data-parallel through
`mindrun launch`) once per setting, and reads each worker's peak RSS ("peak host memory" at the end of its log;
the largest over ranks) and the median tokens/s of the run's metrics. Rows come from one invocation, so their
ratios compare; the first setting of a case is its baseline. Results: bench/out/memory_levers/result.json and a
Markdown table for bench/README.md.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

QUICK = ["train.eval_every=100000", "data.valid_limit=8", "eval.max_len_b=2", "train.progress=false",
         "train.keep_last=1", "train.log_every=1", "train.compile_cache=false"]
# name -> (recipe, workers, fixed settings, the settings compared (the first is the baseline))
CASES = {
    "tiny_recompute": ("tiny", 1, ["train.max_steps=10"],
                       [[], ["model.recompute=selective"], ["model.recompute=full"]]),
    "small_recompute": ("small", 1, ["train.max_steps=10"],
                        [[], ["model.recompute=selective"], ["model.recompute=full"]]),
    "small_shard": ("small", 2, ["train.max_steps=10"], [[], ["parallel.optimizer_shard=true"]]),
    # gpt_125m's width and depth (12 x 768, 50k-entry table cut to the data's vocabulary) at a sequence the CPU
    # affords
    "gpt_125m_levers": ("gpt_125m", 2, ["train.max_steps=20", "data.pack_length=64", "data.max_tokens=512",
                                       "model.max_positions=128",
                                       "data.buckets=[64]", "data.vocab_size=8000"],
                        [[], ["parallel.optimizer_shard=true", "model.recompute=full"]]),
}


def run(recipe: str, workers: int, sets, data_dir: str, out: Path) -> dict:
    """One training run; its peak RSS (largest over ranks, MiB), median tokens/s and wall seconds."""
    from trainer.loop.host_memory import parse_lines
    from trainer.loop.summary import median_of

    args = ["--config", recipe, "--data-dir", data_dir, "--set", f"train.out_dir={out / 'run'}"]
    for s in [*QUICK, *sets]:
        args += ["--set", s]
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    if workers == 1:
        cmd = [sys.executable, "-m", "trainer", "train", *args]
    else:
        cmd = [sys.executable, "-m", "launcher", "--worker_num", str(workers), "--local_worker_num", str(workers),
               "--master_port", "0", "--log_dir", str(out / "logs"), "-m", "trainer", "train", *args]
    start = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.time() - start
    text = proc.stdout + proc.stderr
    if workers > 1 and (out / "logs").is_dir():
        text += "".join(p.read_text(errors="replace") for p in (out / "logs").glob("worker_*.log"))
    if proc.returncode:
        out.mkdir(parents=True, exist_ok=True)
        (out / "output.txt").write_text(text)
        raise RuntimeError(f"{recipe} {sets} failed (exit {proc.returncode}); see {out / 'output.txt'}")
    ranks = parse_lines(text)
    return {"peak_mib": max(r["peak"] for r in ranks.values()), "peaks": {k: r["peak"] for k, r in ranks.items()},
            "training_mib": max(r["training"] for r in ranks.values()),
            "training_less_before_model_mib": max(r["training"] - r["before_model"] for r in ranks.values()),
            "end_mib": max(r["end"] for r in ranks.values()), "tokens_per_s": median_of(out / "run"),
            "wall_s": round(seconds, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data/multi30k")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--out", default="bench/out/memory_levers")
    args = parser.parse_args()
    out = Path(args.out)
    rows = []
    for name in args.cases.split(","):
        recipe, workers, fixed, variants = CASES[name]
        base = None
        for i, sets in enumerate(variants):
            record = run(recipe, workers, [*fixed, *sets], args.data_dir, out / f"{name}_{i}")
            base = base or record
            record.update(case=name, recipe=recipe, workers=workers, settings=sets or ["(none)"],
                          memory_ratio=round(record["peak_mib"] / base["peak_mib"], 3),
                          speed_ratio=round(record["tokens_per_s"] / base["tokens_per_s"], 3))
            rows.append(record)
            print(json.dumps(record), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps(rows, indent=1))
    print("\n| case | workers | settings | peak RSS (largest rank) | vs baseline | training's peak | RSS at the end | "
          "tokens/s | vs baseline |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['workers']} | {' '.join(r['settings'])} | {r['peak_mib']:,} MiB | "
              f"{r['memory_ratio']:.2f} | {r['training_mib']:,} MiB | {r['end_mib']:,} MiB | "
              f"{r['tokens_per_s']:,.0f} | "
              f"{r['speed_ratio']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
