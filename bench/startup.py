"""bench/startup: seconds from `mindrun launch` to the first optimizer update, cold and on a resumed restart.

    python -m bench.startup --rounds 3 --data-dir ../shared/data/multi30k

Each round, for train.compile_cache on and off (interleaved): a cold 2-worker data-parallel job of the
`small` recipe in a fresh run directory (2 updates, then its end-of-run checkpoint), then the same job
relaunched with --resume (what `--max_restarts` does after a failure: the workers start again and resume
from the newest checkpoint) for 2 more updates; then a new run of the same configuration in another run
directory ("rerun": with the compile cache on, it starts from the graphs the cold run published to mindrun's
cache directory, trainer/compile_cache.py; every cold run starts with that shared cache emptied). The time of
an update is the time stamp of its record in metrics.jsonl (train.log_every=1), against the moment the bench
started `mindrun launch`. The tokenizer and the CPU kernels are already in the cache directory for every run (a user's first run builds them once:
not counted). Where the time goes: rank 0's `startup` record (trainer/loop/startup.py: seconds from the launcher's
spawn through imports, cluster, data, build, checkpoint, first update); "launcher" is the rest (the
launcher's own start until it spawns the workers). Results: medians printed, and bench/out/startup/result.json.

`--trees before=DIR after=DIR` runs every case from each source tree (e.g. a `git worktree` of an older
commit: `-m launcher` / `-m trainer` resolve from the working directory), interleaved within each round:
before and after in one invocation. `--recipe` picks the recipe (default `small`; the README's job is `quick`),
`--caches true` only the default compile cache. `--modes dynamic store` compares the launch modes (the scheduler
process against rank 0's store, launcher/join.py) within each round; `--bind-core` launches as the README does
(`--bind_core True`).
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

from trainer.data.multi30k import cache_root
from trainer.loop.metrics import read_metrics

ROOT = Path(__file__).resolve().parent.parent


def first_update_after(run: Path, step: int, started: float) -> float:
    """Seconds from `started` to the record of update `step` in run's metrics.jsonl."""
    for record in read_metrics(run / "metrics.jsonl", "train"):
        if record["step"] == step:
            return record["time"] - started
    raise SystemExit(f"no train record for step {step} in {run / 'metrics.jsonl'}")


def startup_phases(run: Path, step: int) -> dict:
    """Rank 0's start-up phases (seconds) of the run whose first update was `step`."""
    for record in read_metrics(run / "metrics.jsonl", "startup"):
        if record["step"] == step:
            return {k[:-2]: v for k, v in record.items() if k.endswith("_s")}
    raise SystemExit(f"no startup record for step {step} in {run / 'metrics.jsonl'}")


def launch(run: Path, data_dir: str, steps: int, cache: bool, resume: bool, tree: Path = ROOT, recipe: str = "small",
           mode: str = "", bind_core: bool = False):
    """Launch a 2-worker job that trains to `steps`; seconds from launch to its first update, and where
    they went. `mode`: --launch_mode (empty: the launcher's default)."""
    cmd = [sys.executable, "-m", "launcher", "--worker_num", "2", "--local_worker_num", "2", "--master_port", "0"]
    cmd += ["--launch_mode", mode] if mode else []
    cmd += ["--bind_core", "True"] if bind_core else []
    cmd += ["--log_dir", str(run / "logs"), "-m", "trainer", "train", "--config", recipe, "--data-dir", data_dir,
           "--set", f"train.out_dir={run}", "--set", f"train.max_steps={steps}", "--set", "train.log_every=1",
           "--set", "train.eval_every=0", "--set", "data.valid_limit=16", "--set", "train.progress=false",
           "--set", f"train.compile_cache={str(cache).lower()}"]
    if resume:
        cmd.append("--resume")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    started = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tree, env=env, timeout=1200)
    if proc.returncode != 0:
        raise SystemExit(f"launch failed ({run}):\n{(proc.stdout + proc.stderr)[-3000:]}")
    seconds, phases = first_update_after(run, steps - 1, started), startup_phases(run, steps - 1)
    return seconds, {"launcher": round(seconds - phases["total"], 2), **phases}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "multi30k"))
    parser.add_argument("--out", default="bench/out/startup")
    parser.add_argument("--trees", nargs="+", default=[], metavar="NAME=DIR",
                        help="source trees to compare (default: this one)")
    parser.add_argument("--recipe", default="small")
    parser.add_argument("--caches", nargs="+", choices=["true", "false"], default=["true", "false"])
    parser.add_argument("--modes", nargs="+", choices=["dynamic", "store"], default=[""],
                        help="launch modes to compare (default: the launcher's own)")
    parser.add_argument("--bind-core", action="store_true", help="--bind_core True, as the README's job")
    args = parser.parse_args()
    out = ROOT / args.out
    trees = dict(t.split("=", 1) for t in args.trees) or {"": str(ROOT)}
    label = {(tree, cache, mode): (f"{tree} " if tree else "") + (f"{mode} " if mode else "")
             + ("cache" if cache else "nocache")
             for tree in trees for cache in (c == "true" for c in args.caches) for mode in args.modes}
    times = {(case, kind): [] for case in label for kind in ("cold", "restart", "rerun")}
    phases = {key: [] for key in times}
    for i in range(args.rounds):
        for case, name in label.items():
            tree, cache, mode = case
            run, rerun = (out / f"{what}-{name.replace(' ', '-')}" for what in ("run", "rerun"))
            for stale in (run, rerun, cache_root() / "compile"):  # cold: no graph compiled before
                shutil.rmtree(stale, ignore_errors=True)
            for kind, steps in (("cold", 2), ("restart", 4), ("rerun", 2)):
                seconds, parts = launch(rerun if kind == "rerun" else run, args.data_dir, steps, cache,
                                        kind == "restart", Path(trees[tree]), args.recipe, mode, args.bind_core)
                times[(case, kind)].append(seconds)
                phases[(case, kind)].append(parts)
            print(f"round {i} {name}: cold {times[(case, 'cold')][-1]:.1f} s, restart "
                  f"{times[(case, 'restart')][-1]:.1f} s, rerun {times[(case, 'rerun')][-1]:.1f} s", file=sys.stderr)
    medians = {f"{label[c]}_{k}": round(statistics.median(v), 1) for (c, k), v in times.items()}
    record = {"date": time.strftime("%Y-%m-%d %H:%M"), "rounds": args.rounds, "recipe": args.recipe, "trees": trees,
              "modes": args.modes, "bind_core": args.bind_core,
              "medians_s": medians,
              "all_s": {f"{label[c]}_{k}": [round(x, 1) for x in v] for (c, k), v in times.items()},
              "phases_s": {f"{label[c]}_{k}": v for (c, k), v in phases.items()}}
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps(record, indent=1) + "\n")
    print("| case (train.compile_cache) | launch to first update (cold) | restart (--resume) to first update | "
          "a new run of the same configuration |")
    print("|---|---|---|---|")
    for name in label.values():
        cold, restart, rerun = (medians[f"{name}_{k}"] for k in ("cold", "restart", "rerun"))
        print(f"| {name} | {cold} s | {restart} s | {rerun} s |")
    names = list(next(iter(phases.values()))[0])
    print("\n| phase (median s, rank 0) | " + " | ".join(f"{label[c]}, {k}" for c, k in phases) + " |")
    print("|---|" + "---|" * len(phases))
    for name in names:
        cells = [f"{statistics.median(p[name] for p in runs):.1f}" for runs in phases.values()]
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
