"""End to end: train a tiny model on a few hundred pairs, then evaluate and translate its checkpoint."""
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import checkpoint_tensors
from trainer.config import load_config
from trainer.loop.metrics import read_metrics
from trainer.train import train

pytestmark = pytest.mark.slow


def tiny(data_dir, out, *extra):
    return load_config("tiny", [f"data.dir={data_dir}", f"train.out_dir={out}", *extra])


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    summary = train(tiny(data_dir, out, "train.max_epochs=6"))
    return out, summary


def test_loss_falls_and_checkpoints_exist(trained):
    out, summary = trained
    losses = [r["loss"] for r in read_metrics(out / "metrics.jsonl", "train")]
    assert len(losses) >= 6
    assert losses[-1] < losses[0] - 0.8, losses
    valid = [r["loss"] for r in read_metrics(out / "metrics.jsonl", "valid")]
    assert valid[-1] < valid[0]
    best, latest = (out / "checkpoints" / name for name in ("best", "latest"))
    assert (best / "manifest.json").is_file() and (latest / "manifest.json").is_file()
    assert latest.resolve().name == f"step_{summary['steps']}" and best.resolve().name == f"step_{summary['best']['step']}"
    assert (out / "tb").is_dir() and any((out / "tb").iterdir())
    assert summary["steps"] > 0 and summary["best"]["step"] > 0


def run_cli(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "trainer", *args], input=stdin, capture_output=True,
                          text=True, timeout=600)


def test_evaluate_cli(trained, data_dir):
    out, _ = trained
    proc = run_cli("evaluate", "--checkpoint", str(out / "checkpoints" / "best"), "--split", "test",
                   "--beam", "2", "--data-dir", str(data_dir), "--output", str(out / "test.hyp"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["sentences"] == 1000 and result["split"] == "test"
    assert result["bleu_signature"].startswith("nrefs:1|case:mixed")
    assert "case:lc" in result["bleu_lowercase_signature"]
    hyps = (out / "test.hyp").read_text(encoding="utf-8").splitlines()
    assert len(hyps) == 1000
    # the printed scores are sacreBLEU's on the written translations against test2016's references
    import sacrebleu

    from trainer.data import multi30k

    refs = [t for _, t in multi30k.read_split(multi30k.locate(str(data_dir), None), "test", "de", "en")]
    assert result["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score, abs=0.01)
    assert result["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score, abs=0.01)
    assert result["bleu"] > 0.0  # six epochs of the tiny model translate some n-grams right


def test_translate_cli(trained):
    out, _ = trained
    lines = "Ein Mann fährt Fahrrad.\nZwei Hunde spielen im Schnee.\nEine Frau liest ein Buch.\n"
    proc = run_cli("translate", "--checkpoint", str(out / "checkpoints" / "best"), "--beam", "1",
                   stdin=lines)
    assert proc.returncode == 0, proc.stderr[-2000:]
    outputs = proc.stdout.splitlines()
    assert len(outputs) == 3 and all(o.strip() for o in outputs)
    merged = run_cli("ckpt", "merge", str(out / "checkpoints" / "best"), str(out / "checkpoints" / "merged.ckpt"))
    assert merged.returncode == 0, merged.stderr[-2000:]
    again = run_cli("translate", "--checkpoint", str(out / "checkpoints" / "merged.ckpt"), "--beam", "1", stdin=lines)
    assert again.returncode == 0 and again.stdout.splitlines() == outputs, again.stderr[-2000:]


def test_resume_of_packed_batches_continues_where_the_run_stopped(data_dir, tmp_path, monkeypatch):
    """6 steps, stop, resume to 12 == 12 steps straight (dropout on, same data order, Adam state kept): losses,
    gradient norms, weights and optimizer state, bit for bit; padded batches and the parallel layouts:
    test_parallel_jobs.py. The resume is a worker restarted by `mindrun launch --max_restarts`:
    MINDRUN_RESTART_COUNT > 0 turns on train.resume (at the entry point, before the config is frozen).
    The two runs' first 6 steps are two runs of one seed: the same curve; a third run with another seed draws
    another data order and other dropout masks: another curve."""
    from trainer.cli import main

    common = ["train.log_every=1", "train.eval_every=100", "data.packing=true", "data.pack_length=48",
              "model.dropout=0.1", "data.valid_limit=8", "eval.max_len_b=2"]
    straight = tmp_path / "straight"
    train(tiny(data_dir, straight, "train.max_steps=12", *common))
    split = tmp_path / "split"
    train(tiny(data_dir, split, "train.max_steps=6", *common))
    first = read_metrics(split / "metrics.jsonl", "train")
    monkeypatch.setenv("MINDRUN_RESTART_COUNT", "1")
    args = ["train", "--config", "tiny", "--data-dir", str(data_dir), "--set", f"train.out_dir={split}",
            "--set", "train.max_steps=12"]
    for setting in common:
        args += ["--set", setting]
    assert main(args) == 0
    assert json.loads((split / "summary.json").read_text())["steps"] == 12
    want = [(r["step"], r["loss"]) for r in read_metrics(straight / "metrics.jsonl", "train")]
    again = read_metrics(split / "metrics.jsonl", "train")
    got = [(r["step"], r["loss"]) for r in again]
    assert [s for s, _ in got] == list(range(1, 13))
    assert again[:6] == first  # steps 1-6 were not trained again (their records carry wall-clock times)
    assert got == want
    assert [r["grad_norm"] for r in again] == [r["grad_norm"] for r in read_metrics(straight / "metrics.jsonl", "train")]
    a, b = (checkpoint_tensors(run, ("weight", "optimizer"), step=12) for run in (straight, split))
    assert set(a) == set(b) and any("moment" in n for n in a)
    for name in a:  # the same weights and optimizer state, bit for bit
        assert np.array_equal(a[name], b[name]), name
    other = tmp_path / "other_seed"
    train(tiny(data_dir, other, "train.max_steps=6", "train.seed=2", *common))
    other_curve = [r["loss"] for r in read_metrics(other / "metrics.jsonl", "train")]
    assert len(other_curve) == 6 and other_curve != pytest.approx([loss for _, loss in want[:6]], rel=1e-3)


def _train_steps(out):
    path = out / "metrics.jsonl"
    return [r["step"] for r in read_metrics(path, "train")] if path.exists() else []


@pytest.mark.multiprocess
def test_sigterm_to_the_launcher_saves_last_checkpoint_then_resume_continues(data_dir, tmp_path):
    """Ctrl-C/SIGTERM on a 2-worker job: workers agree on a step, save it, exit 143;
    `train.resume=true` then continues from the saved step without repeating any (here in one process)."""
    import os
    import signal
    import time
    from pathlib import Path

    out = tmp_path / "run"
    bin_dir = Path(sys.executable).parent
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    cmd = [sys.executable, "-m", "launcher", "--worker_num", "2", "--local_worker_num", "2", "--master_port", "0",
           "--log_dir", str(tmp_path / "logs"), "-m", "trainer", "train", "--config", "tiny",
           "--data-dir", str(data_dir), "--set", f"train.out_dir={out}", "--set", "train.log_every=1",
           "--set", "train.eval_every=1000", "--set", "data.buckets=[64]", "--set", "eval.max_len_b=2"]
    job = subprocess.Popen([*cmd, "--set", "train.max_steps=400"], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while len(_train_steps(out)) < 3 and job.poll() is None and time.time() < deadline:
        time.sleep(0.5)
    assert job.poll() is None, job.stdout.read()[-3000:]
    job.send_signal(signal.SIGTERM)
    log = job.communicate(timeout=120)[0]
    assert job.returncode == 128 + signal.SIGTERM, log[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted_by_signal"] == signal.SIGTERM
    stopped = summary["steps"]
    assert 3 <= stopped < 400 and (out / "checkpoints" / "latest").resolve().name == f"step_{stopped}"
    assert _train_steps(out) == list(range(1, stopped + 1))

    # resumed in this process, one rank (the data-parallel resume is launched by tests/test_parallel_jobs.py and
    # tests/test_kill_trials.py)
    train(tiny(data_dir, out, "train.log_every=1", "train.eval_every=1000", "data.buckets=[64]", "eval.max_len_b=2",
               f"train.max_steps={stopped + 3}", "train.resume=true"))
    assert _train_steps(out) == list(range(1, stopped + 4))  # nothing repeated, nothing skipped


def test_the_time_budget_counts_the_runs_a_resume_continues(data_dir, tmp_path):
    """A checkpoint carries the training seconds so far; a resume whose budget they already spend trains no more.
    (The first run also saves by the clock: train.save_every_minutes.)"""
    quick = ("data.buckets=[64]", "data.valid_limit=8", "eval.max_len_b=2")  # one shape, a short validation
    train(tiny(data_dir, tmp_path, "train.max_steps=3", "train.log_every=1", "train.eval_every=100",
               "train.save_every_minutes=0.0001", "train.keep_last=10", *quick))
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*")) == ["step_1", "step_2", "step_3"]
    manifest = json.loads((tmp_path / "checkpoints" / "latest" / "manifest.json").read_text())
    spent = manifest["position"]["elapsed_s"]
    assert spent > 0
    summary = train(tiny(data_dir, tmp_path, "train.max_steps=10", "train.log_every=1", "train.eval_every=100",
                         "train.resume=true", f"train.time_budget_minutes={spent / 60 / 2}", *quick))
    assert summary["steps"] == 3
    summary = train(tiny(data_dir, tmp_path, "train.max_steps=5", "train.log_every=1", "train.eval_every=100",
                         "train.resume=true", "train.time_budget_minutes=30", *quick))
    assert summary["steps"] == 5
