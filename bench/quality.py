"""bench/quality: train the `hour` recipe on all of Multi30k for a wall-clock budget, then score test2016.

    python -m bench.quality --minutes 60 --data-dir ../shared/data/multi30k

Model selection uses the validation split only: the checkpoint with the best validation BLEU
during training (greedy), then, decoded with the test's beam, that checkpoint against the
mean of the last --average kept checkpoints (fairseq's checkpoint averaging); test2016 is
decoded once, with beam 5, from the winner. Results go to <out>/result.json, and a copy to
bench/results/quality-<date>-<recipe>.json (kept in the repository, so every figure in
bench/README.md can be checked against its run).
"""
import argparse
import json
import platform
import sys
import time
from pathlib import Path

from trainer.config import load_config
from trainer.evaluate import evaluate
from trainer.loop.metrics import read_metrics
from trainer.train import train


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--recipe", default="hour")
    parser.add_argument("--average", type=int, default=5, help="checkpoints averaged as the second candidate "
                        "(1: the best checkpoint only)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default="bench/out/quality")
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--set", action="append", default=[], help="extra config overrides")
    args = parser.parse_args()

    overrides = [f"train.time_budget_minutes={args.minutes}", f"train.out_dir={args.out}",
                 "train.max_epochs=1000", "train.progress=false"] + args.set
    if args.data_dir:
        overrides.append(f"data.dir={args.data_dir}")
    cfg = load_config(args.recipe, overrides)
    t0 = time.time()
    summary = train(cfg)
    train_records = read_metrics(Path(args.out) / "metrics.jsonl", "train")
    rates = sorted(r["tokens_per_s"] for r in train_records[1:])  # the first window includes compiles
    candidates = [(Path(summary["best_checkpoint"]), 1)]
    if args.average > 1:
        candidates.append((Path(args.out) / "checkpoints" / "latest", args.average))
    valid = []
    for path, average in candidates:
        try:
            valid.append(evaluate(path, "valid", beam=args.beam, data_dir=args.data_dir, progress=False,
                                  average=average))
        except Exception as exc:  # e.g. fewer checkpoints kept than --average: report, keep the other
            valid.append({"checkpoint": str(path), "averaged": average, "error": str(exc)})
    scored = [v for v in valid if "bleu" in v]
    pick = max(scored, key=lambda v: v["bleu"])
    test = evaluate(Path(pick["checkpoint"]), "test", beam=args.beam, data_dir=args.data_dir,
                    output=Path(args.out) / "test2016.hyp.en", progress=False, average=pick["averaged"])
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.machine()}, {platform.node()}",
        "cpu": _cpu_model(), "commit": _commit(), "recipe": args.recipe, "budget_minutes": args.minutes,
        "overrides": args.set, "train": summary,
        "tokens_per_s_median": rates[len(rates) // 2] if rates else None,
        "validation_curve": [{k: r.get(k) for k in ("step", "epoch", "bleu", "loss")}
                             for r in read_metrics(Path(args.out) / "metrics.jsonl", "valid")],
        "selection_on_valid": valid, "test2016": test, "total_seconds": round(time.time() - t0, 1),
    }
    text = json.dumps(result, indent=1)
    (Path(args.out) / "result.json").write_text(text, encoding="utf-8")
    kept = Path(__file__).parent / "results" / f"quality-{time.strftime('%Y%m%d-%H%M')}-{args.recipe}.json"
    kept.write_text(text, encoding="utf-8")
    print(text)
    print(f"kept a copy in {kept}")
    return 0


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _commit() -> str:
    import subprocess

    try:
        return subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


if __name__ == "__main__":
    sys.exit(main())
