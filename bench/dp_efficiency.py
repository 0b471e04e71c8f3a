"""bench/dp_efficiency: what a second data-parallel worker buys, on real packed `small` batches.

    python -m bench.dp_efficiency --rounds 3 --data-dir ../shared/data/multi30k

One core per worker (`mindrun launch --bind_core True`; standalone pinned to one core), the `small`
recipe's own packed Multi30k batches (the first updates of epoch 0, cycled), dropout off. In interleaved
rounds: standalone and 2-worker data parallel with one AllReduce per gradient (parallel.grad_reduce=
per_tensor, float32; the default before `auto`), the flat buffer (parallel.grad_reduce=flat, what `auto`
picks for `small` off the CPU), the flat buffer summed through shared memory (parallel.grad_reduce=
shared_memory, `auto`'s pick for a one-host CPU job), the flat buffer in float16 (with a static loss scale of 1024), each at gradient
accumulation 1 and 4 (same global batch per micro-batch), and the step without its data-parallel
reduction (--no-comm: for the communication share 1 - t(no comm) / t(real)). Efficiency = tokens/s of
the job / (2 x standalone's) at the same accumulation. Against the single-process alternative (goal 1's
second half): one worker on both cores ("standalone 2 threads", unpinned) and the README's job shape
(2 workers, no --bind_core), each row's "vs 2-thread worker" = its tokens/s over that worker's.
--variants picks a subset; --set KEY=VALUE overrides a setting of every variant (e.g. data.max_tokens).
Medians; bench/out/dp_efficiency/result.json and a Markdown table on stdout.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORKER = ROOT / "bench" / "parallel_worker.py"
FP16 = ["parallel.grad_reduce_dtype=float16", "precision.loss_scale=static", "precision.initial_scale=1024"]
FLAT = ["--set", "parallel.grad_reduce=flat"]
PER_TENSOR = ["--set", "parallel.grad_reduce=per_tensor"]
SHARED = ["--set", "parallel.grad_reduce=shared_memory"]
VARIANTS = {  # name: (workers, extra worker arguments, one core per process)
    "standalone": (1, [], True),
    "dp2 per-tensor fp32": (2, PER_TENSOR, True),
    "dp2 no communication": (2, ["--no-comm"], True),
    "dp2 flat fp32": (2, FLAT, True),
    "dp2 flat fp16": (2, [a for s in FP16 for a in ("--set", s)], True),
    "dp2 shared memory fp32": (2, SHARED, True),
    "dp2 shared memory fp16": (2, SHARED + [a for s in FP16 for a in ("--set", s)], True),
    "standalone 2 threads": (1, [], False),
    "dp2 flat fp32 unbound": (2, FLAT, False),
    "dp2 per-tensor fp32 unbound": (2, PER_TENSOR, False),
}


def run(name: str, workers: int, extra, bound: bool, accumulation: int, out: Path, steps: int,
        data_dir: str) -> float:
    """tokens/s of one launched configuration."""
    result = out / f"{name.replace(' ', '_')}-acc{accumulation}.json"
    cmd = [sys.executable, "-m", "launcher", "--worker_num", str(workers), "--local_worker_num", str(workers),
           "--master_port", "0", "--bind_core", str(bound), "--log_dir", str(out / "logs" / name.replace(" ", "_")),
           str(WORKER), "--real", "--data-dir", data_dir, "--steps", str(steps), "--accumulation", str(accumulation),
           "--out", str(result), *extra]
    pin = (lambda: os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})) if workers == 1 and bound else None
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, preexec_fn=pin, timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"{name} (accumulation {accumulation}) failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return json.loads(result.read_text())["tokens_per_s"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=12, help="timed updates per run, after 2 warm-up updates")
    parser.add_argument("--accumulation", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--set", action="append", default=[], dest="sets", metavar="KEY=VALUE",
                        help="a config override for every variant, e.g. data.max_tokens=4096 (repeatable)")
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "multi30k"))
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--out", default="bench/out/dp_efficiency")
    args = parser.parse_args()
    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    chosen = {name: VARIANTS[name] for name in VARIANTS if name in args.variants}
    rates = {(name, k): [] for k in args.accumulation for name in chosen}
    sets = [a for kv in args.sets for a in ("--set", kv)]
    for i in range(args.rounds):
        for k in args.accumulation:
            for name, (workers, extra, bound) in chosen.items():
                rates[(name, k)].append(run(name, workers, [*extra, *sets], bound, k, out, args.steps, args.data_dir))
                print(f"round {i} accumulation {k} {name}: {rates[(name, k)][-1]:.0f} tokens/s", file=sys.stderr)
    rows = []
    for k in args.accumulation:
        median = {name: statistics.median(rates[(name, k)]) for name in chosen}
        base, no_comm, threads = (median.get(n) for n in ("standalone", "dp2 no communication", "standalone 2 threads"))
        for name, rate in median.items():
            rows.append({"variant": name, "accumulation": k, "tokens_per_s": round(rate),
                         "efficiency": round(rate / (2 * base), 3) if base and chosen[name][0] == 2 else None,
                         "comm_share": (round(1 - rate / no_comm, 3) if no_comm and chosen[name][0] == 2
                                        and name != "dp2 no communication" else None),
                         "vs_2_threads": round(rate / threads, 3) if threads else None})
    record = {"date": time.strftime("%Y-%m-%d %H:%M"), "rounds": args.rounds, "steps": args.steps,
              "sets": args.sets,
              "cpu": next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                           if line.startswith("model name")), "?"),
              "rows": rows, "all": {f"{n} acc{k}": v for (n, k), v in rates.items()}}
    (out / "result.json").write_text(json.dumps(record, indent=1) + "\n")
    print("| variant | accumulation | tokens/s (median) | efficiency vs 2 x standalone | communication share | "
          "vs 2-thread worker |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        eff = "-" if r["efficiency"] is None else f"{100 * r['efficiency']:.0f} %"
        share = "-" if r["comm_share"] is None else f"{100 * r['comm_share']:.0f} %"
        threads = "-" if r["vs_2_threads"] is None else f"{r['vs_2_threads']:.2f}x"
        print(f"| {r['variant']} | {r['accumulation']} | {r['tokens_per_s']:,} | {eff} | {share} | {threads} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
