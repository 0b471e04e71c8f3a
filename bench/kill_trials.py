"""bench/kill_trials: kill -9 a training job at random moments, then `resume: auto` it.

    python -m bench.kill_trials --trials 20 [--seed 0] [--data-dir DIR]

Each trial starts a 2-worker job of the tiny recipe (`mindrun launch`, data_parallel or
model_parallel 2 in turn, dropout on, a sharded checkpoint every 2 steps), waits a random
time, and SIGKILLs one worker or the launcher; every third trial instead waits for a save to
begin after at least one has committed (a step directory without its manifest), stops the workers (SIGSTOP),
and kills only if the save is still unfinished then (else it lets them go on and waits for the next save). It then restarts the job with
`train.resume=auto` for two more steps and checks that

  - the restart succeeds (exit 0),
  - it resumed from the newest checkpoint that was complete when the job died (no optimizer
    step before it lost), and that checkpoint's files verify,
  - the steps it logs continue right after that checkpoint's step.

Results: <out>/result.json (one record per trial) and a Markdown table on stdout; the run
fails (exit 1) if any trial does. tests/test_kill_trials.py runs one trial of each kind.
"""
import argparse
import json
import os
import platform
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Optional

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def command(data_dir: Path, run: Path, logs: Path, layout: str, max_steps: int, *sets: str):
    par = {"dp2": "parallel.mode=data_parallel", "mp2": "parallel.model_parallel=2"}[layout]
    cmd = [sys.executable, "-m", "launcher", "--worker_num", "2", "--local_worker_num", "2", "--master_port", "0",
           "--log_dir", str(logs), "-m", "trainer", "train", "--config", "tiny", "--data-dir", str(data_dir)]
    for s in (f"train.out_dir={run}", f"train.max_steps={max_steps}", "train.max_epochs=100000", "train.log_every=1",
              "train.eval_every=1000",
              "train.save_every_steps=2", "train.keep_last=3", "model.dropout=0.1", "data.buckets=[64]",
              "eval.max_len_b=2", "data.valid_limit=8", par, *sets):
        cmd += ["--set", s]
    return cmd


def complete_steps(run: Path):
    """Steps of the step directories whose manifest parses and whose files verify (newest first)."""
    from trainer.ckpt import manifest as mf
    from trainer.ckpt.store import step_dirs

    done = []
    for step, directory in step_dirs(run / "checkpoints"):
        try:
            if mf.verify(directory, mf.read(directory)) is None:
                done.append(step)
        except mf.ManifestError:
            pass
    return done


def saving_now(run: Path) -> bool:
    """A save has begun and not committed: a step directory without a manifest."""
    root = run / "checkpoints"
    return root.is_dir() and any(p.name.startswith("step_") and not (p / "manifest.json").exists()
                                 for p in root.iterdir())


def committed_steps(run: Path):
    """Steps whose manifest exists (committed), newest first, without verifying."""
    root = run / "checkpoints"
    if not root.is_dir():
        return []
    return sorted((int(p.name[5:]) for p in root.iterdir()
                   if p.name.startswith("step_") and p.name[5:].isdigit() and (p / "manifest.json").exists()),
                  reverse=True)


def committed_any(run: Path) -> bool:
    root = run / "checkpoints"
    return root.is_dir() and any((p / "manifest.json").exists() for p in root.iterdir() if p.name.startswith("step_"))


def logged_steps(run: Path):
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    steps = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by the kill
        if record.get("kind") == "train":
            steps.append(record["step"])
    return steps


def signal_all(pids, signum):
    """Send `signum` to each of `pids` that still exists; returns `pids` (an empty list after SIGCONT)."""
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass
    return [] if signum == signal.SIGCONT else list(pids)


def worker_pids(launcher_pid: int):
    import psutil

    try:
        children = psutil.Process(launcher_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return [c.pid for c in children if any("trainer" in a for a in c.cmdline()[1:4])]


def trial(index: int, data_dir: Path, out: Path, victim: str, layout: str, at_save: bool, delay: float,
          max_steps: int = 2000) -> Dict:
    """One kill and one resume; returns the trial's record (ok: whether every check held)."""
    run, logs = out / f"trial_{index}", out / f"trial_{index}_logs"
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    job = subprocess.Popen(command(data_dir, run, logs, layout, max_steps), env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, start_new_session=True)
    start = time.time()
    deadline = start + 240
    while time.time() < deadline and job.poll() is None:  # training has begun
        if logged_steps(run):
            break
        time.sleep(0.05)
    trained_from = time.time()
    caught = False  # the moment to kill came (a save in progress, or the delay)
    frozen = []  # at_save: the job's workers, stopped (SIGSTOP) while a save was seen in progress
    while job.poll() is None and time.time() < deadline:
        if at_save and saving_now(run) and committed_any(run):  # a save after at least one committed
            frozen = signal_all(worker_pids(job.pid), signal.SIGSTOP)
            if saving_now(run):  # still unfinished with every worker stopped: the kill lands inside it
                caught = True
                break
            frozen = signal_all(frozen, signal.SIGCONT)  # it committed meanwhile: wait for the next save
        if not at_save and time.time() - trained_from >= delay:
            caught = True
            break
        time.sleep(0.002 if at_save else 0.05)
    killed_in_save = saving_now(run) if caught else False
    killed_at = time.time()
    complete_before = committed_steps(run)  # cheap (no hashing): the kill follows at once
    target: Optional[int] = None
    killed = caught and job.poll() is None  # else it ended or timed out first (a failure of the trial)
    if killed:
        workers = frozen or worker_pids(job.pid)
        target = job.pid if victim == "launcher" or not workers else random.choice(workers)
        os.kill(target, signal.SIGKILL)
    signal_all(frozen, signal.SIGCONT)  # the others see the failure and end as in any crash
    try:
        job.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pass
    # orphans of a killed launcher are issue 20's; here the whole session goes, so the resume runs alone
    try:
        os.killpg(job.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    time.sleep(1.0)
    complete = complete_steps(run)
    newest = complete[0] if complete else 0
    before = logged_steps(run)
    resume_to = newest + 2
    proc = subprocess.run(command(data_dir, run, out / f"trial_{index}_resume_logs", layout, resume_to,
                                  "train.resume=auto"), env=env, capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    found = re.search(r"resuming from \S+step_(\d+) at step (\d+)", log)
    resumed_from = int(found.group(2)) if found else 0
    after = logged_steps(run)
    continued = after[-2:] == [newest + 1, newest + 2]
    record = {"trial": index, "layout": layout, "victim": victim, "killed": killed,
              "killed_after_s": round(killed_at - start, 1),
              "killed_in_save": killed_in_save, "last_logged_step": max(before, default=0),
              "complete_checkpoints": complete, "complete_before_kill": complete_before,
              "resumed_from": resumed_from, "resume_rc": proc.returncode, "continued": continued}
    record["ok"] = (killed and proc.returncode == 0 and resumed_from == newest and continued
                    and newest >= (complete_before[0] if complete_before else 0) and (killed_in_save or not at_save))
    if not record["ok"]:
        record["resume_log_tail"] = log[-2000:]
    return record


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=os.environ.get("MINDRUN_DATA_DIR", str(ROOT.parent / "shared/data/multi30k")))
    parser.add_argument("--out", default="bench/out/kill_trials")
    args = parser.parse_args()
    random.seed(args.seed)
    out = Path(args.out).resolve()
    records = []
    for i in range(args.trials):
        at_save = i % 3 == 2
        victim = "launcher" if i % 4 == 3 else "worker"
        layout = "mp2" if i % 2 else "dp2"
        record = trial(i, Path(args.data_dir), out, victim, layout, at_save, random.uniform(0.0, 25.0))
        records.append(record)
        print(json.dumps(record), flush=True)
    result = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} CPUs", "command": " ".join(sys.argv), "trials": records,
              "ok": sum(r["ok"] for r in records), "killed_in_save": sum(r["killed_in_save"] for r in records)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps(result, indent=1))
    print("\n| trial | layout | killed | after s | in a save | last logged step | complete checkpoints | resumed from | ok |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in records:
        print(f"| {r['trial']} | {r['layout']} | {r['victim']} | {r['killed_after_s']} | {r['killed_in_save']} | "
              f"{r['last_logged_step']} | {r['complete_checkpoints'][:3]} | {r['resumed_from']} | {r['ok']} |")
    print(f"\n{result['ok']} of {len(records)} trials ok; {result['killed_in_save']} killed during a save")
    return 0 if result["ok"] == len(records) else 1


if __name__ == "__main__":
    sys.exit(main())
