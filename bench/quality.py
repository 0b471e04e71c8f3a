"""bench/quality: train `small` on all of Multi30k for a wall-clock budget, then score test2016.

    python -m bench.quality --minutes 60 --data-dir ../shared/data/multi30k

Model selection uses the validation split only (best validation BLEU); test2016 is
decoded once, with beam 5, from that checkpoint. Results go to <out>/result.json.
"""
import argparse
import json
import platform
import sys
import time
from pathlib import Path

from trainer.config import load_config
from trainer.evaluate import evaluate
from trainer.metrics import read_metrics
from trainer.train import train


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--recipe", default="small")
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
    test = evaluate(Path(summary["best_checkpoint"]), "test", beam=args.beam, data_dir=args.data_dir,
                    output=Path(args.out) / "test2016.hyp.en", progress=False)
    result = {
        "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {platform.node()}",
        "recipe": args.recipe, "budget_minutes": args.minutes, "overrides": args.set,
        "train": summary, "tokens_per_s_median": rates[len(rates) // 2] if rates else None,
        "test2016": test, "total_seconds": round(time.time() - t0, 1),
    }
    (Path(args.out) / "result.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
