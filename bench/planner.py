"""bench/planner: the planner's memory estimate against measured peak memory, and the CPU memory model's fit.

    python -m bench.planner --data-dir ../shared/data/multi30k [--cases small,base] [--fit]

Each case (a recipe at a batch size, trained 3 updates as a 2-worker data-parallel job on this CPU) runs once with
each combination of the memory levers: model.recompute none/full x parallel.optimizer_shard off/on. A run's memory
is what its ranks print at the end (trainer/loop/host_memory.py): the peak of training (up to the first
validation) less what was resident before the model was built (MindSpore, the data); the largest rank counts.

For every run the table gives the formula's parts (trainer/parallel/sizing.py: state = float32 weights,
gradients and Adam moments; activations, the logits included) and the error of two estimates: the formula as
written, and the formula through the CPU memory model in sizing.py (`CPU`). `--fit` also fits the CPU model's
factors on these runs (least squares of the relative errors) and prints them with the errors they give, in
sample and with each case predicted from a fit on the other cases: copy them into sizing.CPU. `--rows-from
result.json ...` redoes the estimates, fit and table from earlier invocations' runs.
Results: bench/out/planner/result.json and a Markdown table.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import numpy as np

QUICK = ["train.max_steps=3", "train.eval_every=100000", "data.valid_limit=8", "eval.max_len_b=2",
         "train.progress=false", "train.keep_last=1", "train.log_every=1", "train.compile_cache=false"]
O2 = ["precision.level=O2", "precision.dtype=float16", "precision.loss_scale=dynamic"]
LEVERS = ([], ["model.recompute=full"], ["parallel.optimizer_shard=true"],
          ["model.recompute=full", "parallel.optimizer_shard=true"])
# gpt_125m's width and depth (12 x 768) with an 8k vocabulary at a sequence the CPU affords
GPT_125M_WIDTH = ["data.max_tokens=512", "data.pack_length=64", "model.max_positions=128", "data.buckets=[64]",
                  "data.vocab_size=8000"]
# name -> (recipe, settings[, the lever settings it runs: default all of LEVERS]): each a 2-worker data-parallel job
CASES = {
    "tiny": ("tiny", []),
    "small": ("small", ["data.max_tokens=2048"]),
    "small_8k": ("small", ["data.max_tokens=8192"]),
    "base": ("base", ["data.max_tokens=4096", "data.packing=true", "data.pack_length=64"]),
    "gpt_125m_width": ("gpt_125m", [*GPT_125M_WIDTH, "precision.level=O0"]),
    # mixed precision (O2 float16; float16 on the CPU is slow: the levers' none and both only; the gpt_125m width
    # without levers only: with them two ranks' end-of-run validation outgrew this 24 GiB machine)
    "small_o2": ("small", ["data.max_tokens=2048", *O2], (LEVERS[0], LEVERS[-1])),
    "gpt_125m_width_o2": ("gpt_125m", [*GPT_125M_WIDTH, *O2], LEVERS[:1]),
}
WORKERS = 2
MIB = 1024 ** 2


def run(recipe: str, sets: List[str], data_dir: str, out: Path) -> Dict[int, Dict[str, int]]:
    """One launched 2-worker run; each rank's host memory record (MiB)."""
    from trainer.loop.host_memory import parse_lines

    args = ["--config", recipe, "--data-dir", data_dir, "--set", f"train.out_dir={out / 'run'}"]
    for s in [*QUICK, *sets]:
        args += ["--set", s]
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    cmd = [sys.executable, "-m", "launcher", "--worker_num", str(WORKERS), "--local_worker_num", str(WORKERS),
           "--master_port", "0", "--log_dir", str(out / "logs"), "-m", "trainer", "train", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    text = proc.stdout + proc.stderr + "".join(p.read_text(errors="replace")
                                               for p in sorted((out / "logs").glob("worker_*.log")))
    ranks = parse_lines(text)
    if proc.returncode or len(ranks) < WORKERS:
        out.mkdir(parents=True, exist_ok=True)
        (out / "output.txt").write_text(text)
        raise RuntimeError(f"{recipe} {sets} failed (exit {proc.returncode}); see {out / 'output.txt'}")
    return ranks


def estimate_parts(recipe: str, sets: List[str]) -> Dict[str, float]:
    """The formula's parts for one run, in bytes: state, activations (the logits included; the logits alone
    too), the per-device float32 weights (what the levers' extras per parameter count against)."""
    from trainer.config import load_config
    from trainer.parallel.sizing import memory

    cfg = load_config(recipe, sets)
    mem = memory(cfg, cfg.data.vocab_size, WORKERS, 1)
    shard = cfg.parallel.optimizer_shard
    state, acts = mem.parts(shard, cfg.model.recompute)
    layers = cfg.model.decoder_layers + (0 if cfg.model.arch == "decoder_only" else cfg.model.encoder_layers)
    return {"state": state, "activations": acts, "logits": mem.logits, "weights": mem.weights, "shard": shard,
            "layers": layers, "mixed": mem.mixed,
            "recompute": cfg.model.recompute, "formula": mem.total(shard, cfg.model.recompute)}


FACTORS = ("fixed", "state", "activations", "shard_extra", "recompute_extra", "mixed_activations")


def _terms(row: dict) -> List[float]:
    """What each of FACTORS multiplies for a row (the levers free nothing in the CPU model: the parts without
    them; what the sharded optimizer and recompute add per parameter of the device; activations under mixed
    precision have a factor of their own)."""
    parts, params, mixed = row["parts_none"], row["parts"]["weights"] / 4.0, row["parts"]["mixed"]
    return [1.0, parts["state"], 0.0 if mixed else parts["activations"], params if row["parts"]["shard"] else 0.0,
            params if row["parts"]["recompute"] != "none" else 0.0, parts["activations"] if mixed else 0.0]


def with_estimates(row: dict) -> dict:
    """A measured row (of a result.json) given the current formula's parts, with and without its levers."""
    levers = {s for setting in LEVERS for s in setting}
    row["parts"] = estimate_parts(row["recipe"], row["settings"])
    row["parts_none"] = estimate_parts(row["recipe"], [s for s in row["settings"] if s not in levers])
    return row


def model_estimate(row: dict, **factors: float) -> float:
    """A MemoryModel's estimate for a row, from its FACTORS."""
    return sum(factors[name] * term for name, term in zip(FACTORS, _terms(row)))


def fit(rows: List[dict]) -> Dict[str, float]:
    """Least squares of the relative errors of model_estimate over `rows`: the CPU model's FACTORS."""
    a = np.array([_terms(r) for r in rows])
    measured = np.array([r["measured"] for r in rows], dtype=float)
    coef, *_ = np.linalg.lstsq(a / measured[:, None], np.ones(len(rows)), rcond=None)
    return {name: round(float(c), 3) for name, c in zip(FACTORS, coef)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data/multi30k")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--fit", action="store_true", help="fit the CPU memory model's factors on these runs")
    parser.add_argument("--out", default="bench/out/planner")
    parser.add_argument("--rows-from", type=Path, nargs="+", help="result.json files of earlier invocations: their "
                        "runs, not new ones (estimates, fit and table made again)")
    args = parser.parse_args()
    from trainer.parallel.sizing import CPU

    out, rows, failed, dates = Path(args.out), [], [], []
    for path in args.rows_from or []:
        earlier = json.loads(path.read_text())
        rows, failed, dates = rows + earlier["rows"], failed + earlier["failed"], dates + [earlier["date"]]
    for row in rows:
        with_estimates(row)
    for name in [] if args.rows_from else args.cases.split(","):
        recipe, fixed, *runs = CASES[name]
        for levers in runs[0] if runs else LEVERS:
            sets = [*fixed, *levers]
            try:
                ranks = run(recipe, sets, args.data_dir, out / f"{name}-{len(rows) + len(failed)}")
            except RuntimeError as exc:  # e.g. the OOM killer: recorded, the other runs go on
                failed.append({"case": name, "settings": sets, "error": str(exc)})
                print(json.dumps(failed[-1]), flush=True)
                continue
            measured = max(r["training"] - r["before_model"] for r in ranks.values()) * MIB
            row = with_estimates({"case": name, "recipe": recipe, "settings": sets, "levers": levers or ["(none)"],
                                  "ranks": ranks, "measured": measured})
            rows.append(row)
            print(json.dumps({k: row[k] for k in ("case", "levers", "measured")}), flush=True)
    fitted = fit(rows) if args.fit else None
    if fitted:  # each case predicted by the factors fitted on the other cases: the error out of sample
        for name in {r["case"] for r in rows}:
            others = fit([r for r in rows if r["case"] != name])
            for row in rows:
                if row["case"] == name:
                    row["held_out_error"] = model_estimate(row, **others) / row["measured"] - 1
    for row in rows:
        row["cpu_model"] = model_estimate(row, **{name: getattr(CPU, name) for name in FACTORS})
        row["formula_error"] = row["parts"]["formula"] / row["measured"] - 1
        row["cpu_model_error"] = row["cpu_model"] / row["measured"] - 1
        if fitted:
            row["fitted_error"] = model_estimate(row, **fitted) / row["measured"] - 1
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps({"date": ", ".join(dates) or time.strftime("%Y-%m-%d %H:%M"),
                                                 "fitted": fitted,
                                                 "cpu_model": {n: getattr(CPU, n) for n in FACTORS},
                                                 "rows": rows, "failed": failed},
                                                indent=1))
    print("\n| case | levers | state | activations (logits) | measured | formula | error | CPU model | error |"
          + (" fitted error | case held out |" if fitted else ""))
    print("|---|---|---|---|---|---|---|---|---|" + ("---|---|" if fitted else ""))
    for r in rows:
        p = r["parts_none"]
        print(f"| {r['case']} | {' '.join(r['levers'])} | {p['state'] / MIB:,.0f} | {p['activations'] / MIB:,.0f} "
              f"({p['logits'] / MIB:,.0f}) | {r['measured'] / MIB:,.0f} MiB | {r['parts']['formula'] / MIB:,.0f} | "
              f"{r['formula_error']:+.0%} | {r['cpu_model'] / MIB:,.0f} | {r['cpu_model_error']:+.0%} |"
              + (f" {r['fitted_error']:+.0%} | {r['held_out_error']:+.0%} |" if fitted else ""))
    if fitted:
        worst = max(abs(r["fitted_error"]) for r in rows)
        held = max(abs(r["held_out_error"]) for r in rows)
        print(f"\nfitted CPU factors: {fitted} (largest error {worst:.0%}; {held:.0%} with the case held out)")
    for f in failed:
        print(f"FAILED: {f['case']} {' '.join(f['settings'])}: {f['error']}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
