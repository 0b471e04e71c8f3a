"""bench/planner: the planner's memory estimate against the measured peak memory of CPU training runs.

    python -m bench.planner --data-dir ../shared/data/multi30k    # from the repository root

For each case (a recipe and batch size, standalone on this CPU), trains a few steps in a fresh
process and reads that process's peak RSS; a second process that imports MindSpore, sets its
context and loads the tokenized corpus, and stops there, gives the framework's and the data's
share, which the planner does not model. The planner's figure (trainer/parallel/sizing.py:
float32 weights, gradients, Adam moments and the micro-batch's activations) is compared with the
difference. Results: bench/out/planner/result.json and a Markdown table.
"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

CASES = (("small", 2048), ("small", 8192), ("base", 4096))
WORKER = r"""
import json, resource, sys
import mindspore as ms
from trainer.config import load_config
from trainer.dataset import prepare
from trainer.parallel.context import select_backend
from trainer.train import train
cfg = load_config(sys.argv[2], sys.argv[3:])
if sys.argv[1] == "train":
    train(cfg)
else:  # the framework and the data only
    ms.set_context(mode=ms.GRAPH_MODE)
    select_backend()
    prepare(cfg.data)
print("PEAK " + json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024))
"""


def peak(recipe: str, max_tokens: int, steps: int, data_dir: str, out: Path) -> int:
    """Peak RSS in bytes of a fresh process training `steps` steps (0: MindSpore and the data only)."""
    sets = [f"data.max_tokens={max_tokens}", f"train.max_steps={max(steps, 1)}", "train.eval_every=100000",
            "data.valid_limit=8", "eval.max_len_b=2", "train.progress=false", f"train.out_dir={out}",
            f"data.dir={data_dir}", "train.keep_last=1"]
    what = "train" if steps else "framework"
    proc = subprocess.run([sys.executable, "-c", WORKER, what, recipe, *sets], capture_output=True, text=True)
    if proc.returncode:
        out.mkdir(parents=True, exist_ok=True)
        (out / "stderr.txt").write_text(proc.stderr)
        errors = [line for line in proc.stderr.splitlines() if "Error" in line and "[WARNING]" not in line]
        raise RuntimeError(f"{recipe} at {max_tokens} tokens failed (exit {proc.returncode}): "
                           f"{errors[-1] if errors else 'see'} ({out / 'stderr.txt'})")
    return int(next(line for line in proc.stdout.splitlines() if line.startswith("PEAK "))[5:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data/multi30k")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out", default="bench/out/planner")
    args = parser.parse_args()
    from trainer.config import load_config
    from trainer.parallel.sizing import memory

    out, rows = Path(args.out), []
    for recipe, tokens in CASES:
        cfg = load_config(recipe, [f"data.max_tokens={tokens}"])
        est = memory(cfg, cfg.data.vocab_size, 1, 1)
        base = peak(recipe, tokens, 0, args.data_dir, out / f"{recipe}-{tokens}-base")
        full = peak(recipe, tokens, args.steps, args.data_dir, out / f"{recipe}-{tokens}")
        measured = full - base
        rows.append({"recipe": recipe, "max_tokens": tokens, "estimate": est.total(), "weights": est.weights,
                     "activations": est.activations, "peak_rss": full, "framework_rss": base,
                     "measured": measured, "error": est.total() / measured - 1 if measured > 0 else None})
        print(json.dumps(rows[-1]), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"), "rows": rows},
                                                indent=1))
    mib = 1024 ** 2
    print("| recipe, batch | planner estimate | measured (peak RSS - framework) | error | peak RSS |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['recipe']}, {r['max_tokens']} tokens | {r['estimate'] / mib:,.0f} MiB | "
              f"{r['measured'] / mib:,.0f} MiB | {r['error']:+.0%} | {r['peak_rss'] / mib:,.0f} MiB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
