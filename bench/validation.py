"""bench/validation: seconds one validation pass takes with 1 worker and with 2 data-parallel workers.

    python -m bench.validation --rounds 2 --data-dir ../shared/data/multi30k

Each data-parallel rank decodes its share of the valid split (trainer/validation.py: every d-th sentence
in length order; loss sums and hypotheses summed over the group, every rank scores the whole split). Each
run trains `small` for three updates and validates the whole valid split (1,014 pairs: loss, greedy
decoding, BLEU) after each; the figure is the `seconds` of the second `valid` record (rank 0's; it
includes the collectives that gather the hypotheses). The first pass also compiles the decoding graphs, a
fixed cost per rank that splitting cannot shrink; its seconds are reported beside. The model has had two
updates, so greedy decoding runs every sentence to its length limit (eval.max_len_a x source + max_len_b):
the longest a pass can take, the same work in every variant. Variants, interleaved each round: one worker
on one core, one worker on both cores, 2 data-parallel workers on one core each (`--bind_core True`).
Medians; bench/out/validation/result.json and a Markdown table on stdout.

`--trees before=DIR after=DIR` runs the same variants from each source tree (e.g. a `git worktree` of an
older commit: `-m launcher` / `-m trainer` resolve from the working directory), interleaved within each
round: before and after in one invocation. `--variants` picks variants by name.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from trainer.loop.metrics import read_metrics

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = {"1 worker, 1 core": (1, True), "1 worker, 2 cores": (1, False), "2 workers, 1 core each": (2, True)}


def valid_records(run: Path) -> list:
    """The first two valid records of a finished run (the first pass compiles, the second is steady)."""
    records = read_metrics(run / "metrics.jsonl", "valid")
    if len(records) < 2:
        raise SystemExit(f"{len(records)} valid records in {run / 'metrics.jsonl'}, expected 2")
    return records[:2]


def run_variant(run: Path, workers: int, one_core: bool, data_dir: str, tree: Path = ROOT) -> dict:
    """Train three updates, validating after the first two (the end of the run, one update after a pass, saves
    without validating: trainer/train.py); the two valid records."""
    shutil.rmtree(run, ignore_errors=True)
    trainer = ["-m", "trainer", "train", "--config", "small", "--data-dir", data_dir,
               "--set", f"train.out_dir={run}", "--set", "train.max_steps=3", "--set", "train.eval_every=1",
               "--set", "train.progress=false", "--set", "train.compile_cache=false"]
    if workers == 1:
        cmd = [sys.executable, *trainer]
    else:
        cmd = [sys.executable, "-m", "launcher", "--worker_num", str(workers), "--local_worker_num", str(workers),
               "--master_port", "0", "--bind_core", str(one_core), "--log_dir", str(run / "logs"), *trainer]
    pin = (lambda: os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})) if workers == 1 and one_core else None
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tree, env=env, preexec_fn=pin, timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"{run.name} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return valid_records(run)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "multi30k"))
    parser.add_argument("--out", default="bench/out/validation")
    parser.add_argument("--trees", nargs="+", default=[], metavar="NAME=DIR",
                        help="source trees to compare (default: this one)")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    args = parser.parse_args()
    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    trees = dict(t.split("=", 1) for t in args.trees) or {"": str(ROOT)}
    cases = {(f"{tree}: " if tree else "") + name: (Path(path), *VARIANTS[name])
             for name in args.variants for tree, path in trees.items()}
    seconds = {name: [] for name in cases}
    first = {name: [] for name in cases}
    bleu = {}
    for i in range(args.rounds):
        for name, (tree, workers, one_core) in cases.items():
            compiling, record = run_variant(out / "run", workers, one_core, args.data_dir, tree)
            seconds[name].append(record["seconds"])
            first[name].append(compiling["seconds"])
            bleu.setdefault(name, record["bleu"])
            print(f"round {i} {name}: validation {record['seconds']:.1f} s, first pass {compiling['seconds']:.1f} s "
                  f"(BLEU {record['bleu']:.2f})", file=sys.stderr)
    medians = {name: statistics.median(v) for name, v in seconds.items()}
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "rounds": args.rounds, "seconds": seconds,
              "medians_s": medians, "first_pass_seconds": first, "bleu": bleu}
    (out / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    base = medians[next(iter(cases))]
    print("| variant | validation pass (median s) | vs the first row | per round | first pass, compiling "
          "(median s) | first / steady | BLEU |")
    print("|---|---|---|---|---|---|---|")
    for name, values in seconds.items():
        rounds = " / ".join(f"{v:.1f}" for v in values)
        compiling = statistics.median(first[name])
        print(f"| {name} | {medians[name]:.1f} | {base / medians[name]:.2f}x | {rounds} | "
              f"{compiling:.1f} | {compiling / medians[name]:.2f}x | {bleu[name]:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
