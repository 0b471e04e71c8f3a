"""bench/parallel: tokens/s of data_parallel=2 and model_parallel=2 against standalone, one core per worker.

    python -m bench.parallel --repeats 3

Each configuration runs under `mindrun launch --bind_core True` (standalone is pinned to one
core), times the `small` model's training step on synthetic 64 x 32 batches, and is run again
with the collectives replaced by local stand-ins (--no-comm): the share of step time spent
in communication is 1 - t(no comm) / t(real). Medians of --repeats runs; results go to
bench/out/parallel/result.json and a Markdown table on stdout.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORKER = ROOT / "bench" / "parallel_worker.py"
CONFIGS = {"standalone": (1, 1), "data_parallel=2": (2, 1), "model_parallel=2": (2, 2)}


def run(name: str, workers: int, mp: int, no_comm: bool, out: Path, steps: int) -> dict:
    result = out / f"{name}{'_nocomm' if no_comm else ''}.json"
    cmd = [sys.executable, "-m", "launcher", "--worker_num", str(workers), "--local_worker_num", str(workers),
           "--master_port", "0", "--bind_core", "True", "--log_dir", str(out / "logs" / name),
           str(WORKER), "--model-parallel", str(mp), "--steps", str(steps), "--out", str(result)]
    if no_comm:
        cmd.append("--no-comm")
    pin = (lambda: os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})) if workers == 1 else None
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, preexec_fn=pin, timeout=1200)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(result.read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", default="bench/out/parallel")
    args = parser.parse_args()
    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    runs = {name: {"real": [], "no_comm": []} for name in CONFIGS}
    for i in range(args.repeats):
        for name, (workers, mp) in CONFIGS.items():
            runs[name]["real"].append(run(name, workers, mp, False, out, args.steps)["tokens_per_s"])
            if workers > 1:
                runs[name]["no_comm"].append(run(name, workers, mp, True, out, args.steps)["tokens_per_s"])
            print(f"repeat {i} {name}: {runs[name]}", file=sys.stderr)
    base = statistics.median(runs["standalone"]["real"])
    table = {}
    for name, r in runs.items():
        real = statistics.median(r["real"])
        row = {"tokens_per_s": round(real), "vs_standalone": round(real / base, 2)}
        if r["no_comm"]:
            no_comm = statistics.median(r["no_comm"])
            row["comm_share"] = round(1 - real / no_comm, 3)  # 1 - t(no comm) / t(real)
        table[name] = row
    record = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
              "model": "small (3+3, d_model 256, 4 heads, d_ff 1024), vocab 8000, batch 64 x 32, one core per worker",
              "repeats": args.repeats, "median": table, "all": runs}
    (out / "result.json").write_text(json.dumps(record, indent=1), encoding="utf-8")
    print("| layout | tokens/s (median) | vs standalone | communication share of step |")
    print("|---|---|---|---|")
    for name, row in table.items():
        share = f"{100 * row['comm_share']:.0f} %" if "comm_share" in row else "-"
        print(f"| {name} | {row['tokens_per_s']} | {row['vs_standalone']:.2f}x | {share} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
