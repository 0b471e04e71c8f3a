"""bench/launch: launch-to-all-ranks-registered time, mindrun launch vs msrun, same 2-worker job.

    python -m bench.launch --runs 7

Each run starts a fresh job (new port, new log folder) whose workers call MindSpore's init()
and print the time it returned (tests/launch_scripts/allreduce.py). "registered" is the
latest of those times minus the moment the launcher process was started; "exit" is the
launcher's whole wall time. The two launchers alternate, so drift in machine load hits both.
Results: bench/out/launch/result.json and a Markdown table on stdout.
"""
import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from launcher.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tests" / "launch_scripts" / "allreduce.py"
BIN = Path(sys.executable).parent


def one_run(kind: str, log_dir: Path, workers: int) -> dict:
    port = str(free_port())
    if kind == "msrun":
        cmd = [str(BIN / "msrun"), "--join", "True"]
    else:
        cmd = [sys.executable, "-m", "launcher"]
    cmd += ["--worker_num", str(workers), "--local_worker_num", str(workers), "--master_port", port,
            "--log_dir", str(log_dir), str(SCRIPT)]
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    start = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    wall = time.time() - start
    if proc.returncode != 0:
        raise SystemExit(f"{kind} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    stamps = [float(m) for f in log_dir.glob("worker_*.log")
              for m in re.findall(r"REGISTERED rank=\d+ size=\d+ t=([0-9.]+)", f.read_text())]
    if len(stamps) != workers:
        raise SystemExit(f"{kind}: expected {workers} REGISTERED lines in {log_dir}, found {len(stamps)}")
    return {"registered_s": max(stamps) - start, "exit_s": wall}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default="bench/out/launch")
    args = parser.parse_args()
    out = Path(args.out)
    results = {"msrun": [], "mindrun": []}
    for i in range(args.runs):
        for kind in ("msrun", "mindrun") if i % 2 == 0 else ("mindrun", "msrun"):
            results[kind].append(one_run(kind, out / f"{kind}_{i}", args.workers))
            print(f"run {i} {kind}: {results[kind][-1]}", file=sys.stderr)
    summary = {}
    for kind, runs in results.items():
        summary[kind] = {key: round(statistics.median(r[key] for r in runs), 3) for key in ("registered_s", "exit_s")}
    ratio = {key: round(summary["msrun"][key] / summary["mindrun"][key], 2) for key in ("registered_s", "exit_s")}
    record = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
              "runs": args.runs, "workers": args.workers, "median": summary, "msrun_over_mindrun": ratio,
              "all": results}
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps(record, indent=1), encoding="utf-8")
    print("| launcher | launch -> all registered (median s) | launch -> exit (median s) |")
    print("|---|---|---|")
    for kind in ("msrun", "mindrun"):
        print(f"| {kind} | {summary[kind]['registered_s']:.2f} | {summary[kind]['exit_s']:.2f} |")
    print(f"| msrun / mindrun | {ratio['registered_s']:.2f}x | {ratio['exit_s']:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
