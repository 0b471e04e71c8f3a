"""Parallel training on CPU with real processes from our launcher: the same losses and weights as standalone,
and sharded checkpoints that resume exactly, under the same layout or another one.

Tiny model, dropout 0.1 (masks by global batch row: every layout draws the standalone run's,
model/dropout.py), one bucket shape, 6 steps, a sharded checkpoint at step 3; each job is
compared with one standalone run, and resumed runs with the run they continue.
"""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]

STEPS = 6
SAVED = 3  # a checkpoint at this step of every run; resumed runs continue from it
BIN = Path(sys.executable).parent
KEY_BIAS_BOUND = 0.003 * sum(range(1, STEPS + 1)) / 20  # tiny recipe: lr 3e-3, 20 warm-up steps


def settings(data_dir, out):
    return ["--config", "tiny", "--data-dir", str(data_dir), "--set", f"train.out_dir={out}",
            "--set", f"train.max_steps={STEPS}", "--set", "train.log_every=1", "--set", "data.buckets=[64]",
            "--set", "model.dropout=0.1", "--set", "eval.max_len_b=2", "--set", f"train.save_every_steps={SAVED}",
            "--set", "train.keep_last=5"]


def losses(out, first=1):
    records = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if r["kind"] == "train" and r["step"] >= first]


def weights(out):
    from trainer.ckpt.tools import _full_weights, open_verified

    return _full_weights(*open_verified(Path(out) / "checkpoints" / "latest"))


def stopped_at_the_checkpoint(run, into):
    """A copy of `run` as a crash after step SAVED would leave it: step_SAVED its newest checkpoint."""
    shutil.copytree(run, into, symlinks=True, ignore=shutil.ignore_patterns("logs", "tb"))
    for path in (into / "checkpoints").iterdir():
        if path.name.startswith("step_") and path.name != f"step_{SAVED}":
            shutil.rmtree(path)
    return into


def standalone_run(data_dir, out, *sets):
    """The module's settings (plus `sets`) trained in one process; returns its run directory."""
    args = settings(data_dir, out)
    for s in sets:
        args += ["--set", s]
    proc = subprocess.run([sys.executable, "-m", "trainer", "train", *args], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(losses(out)) == STEPS
    return out


@pytest.fixture(scope="module")
def standalone(data_dir, tmp_path_factory):
    return standalone_run(data_dir, tmp_path_factory.mktemp("standalone"))


def launch_job(data_dir, out, workers, *sets, run=None, launcher_args=()):
    """(run directory, finished process) of a launched `mindrun train` job (stdout/stderr are pipes)."""
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    env.pop("GLOG_v", None)  # GLOG_v set would bring MindSpore's log lines back to the console
    run = run or out / "run"
    args = [sys.executable, "-m", "launcher", "--worker_num", str(workers), "--local_worker_num", str(workers),
            "--master_port", "0", "--log_dir", str(out / "logs"), *launcher_args, "-m", "trainer", "train",
            *settings(data_dir, run)]
    for s in sets:
        args += ["--set", s]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return run, proc


def launched(data_dir, out, workers, *sets, run=None):
    return launch_job(data_dir, out, workers, *sets, run=run)[0]


def validations(out):
    records = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["kind"] == "valid"]


def same_run(standalone, parallel):
    ref, got = losses(standalone), losses(parallel)
    assert len(got) == STEPS
    np.testing.assert_allclose(got, ref, rtol=1e-4)
    ref_valid, got_valid = validations(standalone), validations(parallel)  # split across dp ranks, then summed
    assert [r["step"] for r in got_valid] == [r["step"] for r in ref_valid] and got_valid
    np.testing.assert_allclose([r["loss"] for r in got_valid], [r["loss"] for r in ref_valid], rtol=1e-4)
    assert [r["bleu"] for r in got_valid] == [r["bleu"] for r in ref_valid]
    a, b = weights(standalone), weights(parallel)
    assert set(b) and set(b) <= set(a)
    for name in b:
        if name.endswith("w_k.bias"):
            # softmax is blind to a bias on the keys: its gradient is exactly zero in theory and
            # rounding noise in practice, which Adam scales up to lr-sized steps of either sign.
            # Bound it by the total step size (sum of lr over the warm-up steps) instead.
            np.testing.assert_allclose(b[name], a[name], atol=KEY_BIAS_BOUND, err_msg=name)
        else:
            np.testing.assert_allclose(b[name], a[name], rtol=1e-4, atol=2e-5, err_msg=name)


def resumed_exactly(straight, resumed, rtol=0.0):
    """The resumed run's steps SAVED+1.. are the straight run's (its log keeps steps 1..SAVED as they were)."""
    assert losses(resumed)[:SAVED] == losses(straight)[:SAVED]
    got, want = losses(resumed, SAVED + 1), losses(straight, SAVED + 1)
    assert len(got) == STEPS - SAVED
    if rtol:
        np.testing.assert_allclose(got, want, rtol=rtol)
    else:
        assert got == want


def straight_job(data_dir, tmp_path_factory, name, setting, plan):
    """A 2-worker job of the module's settings under `setting`, checked to run the `plan` it was given."""
    out = tmp_path_factory.mktemp(name)
    run = launched(data_dir, out, 2, setting)
    assert plan in (out / "logs" / "worker_0.log").read_text()
    return run


@pytest.fixture(scope="module")
def data_parallel(data_dir, tmp_path_factory):
    return straight_job(data_dir, tmp_path_factory, "dp2", "parallel.mode=data_parallel",
                        "data_parallel 2 x model_parallel 1")


@pytest.fixture(scope="module")
def model_parallel(data_dir, tmp_path_factory):
    return straight_job(data_dir, tmp_path_factory, "mp2", "parallel.model_parallel=2",
                        "hybrid: data_parallel 1 x model_parallel 2")


def test_data_parallel_matches_standalone(standalone, data_parallel):
    for rank in (0, 1):  # each data-parallel rank decoded half of the validation split
        log = (data_parallel.parent / "logs" / f"worker_{rank}.log").read_text()
        assert f"validation: data-parallel rank {rank} decodes 20 of 40 sentences" in log
    same_run(standalone, data_parallel)


def test_standalone_resumes_exactly_with_dropout_on(standalone, data_dir, tmp_path):
    from trainer.config import load_config
    from trainer.train import train

    run = stopped_at_the_checkpoint(standalone, tmp_path / "run")
    args = settings(data_dir, run)
    sets = [v for k, v in zip(args, args[1:]) if k == "--set"]
    train(load_config("tiny", [f"data.dir={data_dir}", *sets, "train.resume=auto"]))
    resumed_exactly(standalone, run)


def test_data_parallel_resumes_exactly_with_dropout_on(data_parallel, data_dir, tmp_path):
    run = stopped_at_the_checkpoint(data_parallel, tmp_path / "run")
    launched(data_dir, tmp_path, 2, "parallel.mode=data_parallel", "train.resume=auto", run=run)
    resumed_exactly(data_parallel, run)


def test_model_parallel_resumes_exactly_with_dropout_on(model_parallel, data_dir, tmp_path):
    run = stopped_at_the_checkpoint(model_parallel, tmp_path / "run")
    launched(data_dir, tmp_path, 2, "parallel.model_parallel=2", "train.resume=auto", run=run)
    resumed_exactly(model_parallel, run)


def test_a_model_parallel_checkpoint_resumes_without_model_parallelism(model_parallel, data_dir, tmp_path):
    """Saved split over 2 ranks (weights and Adam moments), resumed whole in one process: resharded on load."""
    run = stopped_at_the_checkpoint(model_parallel, tmp_path / "run")
    proc = subprocess.run([sys.executable, "-m", "trainer", "train", *settings(data_dir, run), "--resume"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed_exactly(model_parallel, run, rtol=1e-5)


def test_a_model_parallel_checkpoint_resumes_under_data_parallelism(model_parallel, data_dir, tmp_path):
    run = stopped_at_the_checkpoint(model_parallel, tmp_path / "run")
    launched(data_dir, tmp_path, 2, "parallel.mode=data_parallel", "train.resume=auto", run=run)
    resumed_exactly(model_parallel, run, rtol=1e-5)


def test_packed_data_parallel_matches_packed_standalone(data_dir, tmp_path):
    """Packed rows (segment ids and positions) split across data-parallel ranks like padded ones.

    17 rows of 64 over 2 ranks: the second rank's share is padded with an empty row. The gradients go one
    AllReduce per gradient (parallel.grad_reduce=per_tensor; the other data-parallel jobs take the default
    flat buffer)."""
    packing = ["data.packing=true", "data.pack_length=64", "data.max_tokens=1088"]
    ref = standalone_run(data_dir, tmp_path / "standalone", *packing)
    run = launched(data_dir, tmp_path / "dp", 2, "parallel.mode=data_parallel", "parallel.grad_reduce=per_tensor",
                   *packing)
    log = (tmp_path / "dp" / "logs" / "worker_0.log").read_text()
    assert "data_parallel 2 x model_parallel 1" in log and "one flat" not in log
    same_run(ref, run)


def test_hybrid_model_parallel_matches_standalone(standalone, model_parallel):
    same_run(standalone, model_parallel)


def test_data_and_model_parallel_2x2_matches_standalone(standalone, data_dir, tmp_path):
    run = launched(data_dir, tmp_path, 4, "parallel.model_parallel=2", "parallel.data_parallel=2")
    assert "one flat float32 buffer" in (tmp_path / "logs" / "worker_0.log").read_text()  # the default, auto
    same_run(standalone, run)


DECODER_ONLY = ["model.arch=decoder_only", "model.pre_norm=true", "model.decoder_layers=2", "model.ffn=swiglu",
                "model.positions=learned", "data.packing=true", "data.pack_length=64", "data.max_tokens=1088"]


def test_decoder_only_under_data_and_model_parallel_2x2_matches_standalone(data_dir, tmp_path):
    """The decoder-only model on packed rows (source + target in one causal sequence) through the same seam:
    data parallel x hybrid tensor parallel (vocabulary-parallel tied embedding, SwiGLU's two column-split
    projections, a replicated learned position table), the gradients reduced one AllReduce per gradient over
    each data-parallel sub-group (the encoder-decoder's 2x2 job takes the default flat buffer), equals
    standalone."""
    ref = standalone_run(data_dir, tmp_path / "standalone", *DECODER_ONLY)
    run = launched(data_dir, tmp_path / "job", 4, "parallel.model_parallel=2", "parallel.data_parallel=2",
                   "parallel.grad_reduce=per_tensor", *DECODER_ONLY)
    log = (tmp_path / "job" / "logs" / "worker_0.log").read_text()
    assert "data_parallel 2 x model_parallel 2" in log and "one flat" not in log
    same_run(ref, run)


def test_float16_gradient_reduction_stays_within_its_tolerance_of_standalone(standalone, data_dir, tmp_path):
    """Gradients summed in float16 on the wire (the update in float32), under a static loss scale of 1024 (a
    power of two: exact in float32, so standalone without one is the reference): losses within 1e-3 relative and
    weights within 1e-3 absolute of standalone after 6 steps (float16 keeps ~3 significant digits of each
    gradient)."""
    run = launched(data_dir, tmp_path, 2, "parallel.mode=data_parallel", "parallel.grad_reduce_dtype=float16",
                   "precision.loss_scale=static", "precision.initial_scale=1024")
    np.testing.assert_allclose(losses(run), losses(standalone), rtol=1e-3)
    a, b = weights(standalone), weights(run)
    worst = max(float(np.abs(b[name] - a[name]).max()) for name in b if not name.endswith("w_k.bias"))
    assert worst < 1e-3, worst
    assert "gradients summed in one flat float16 buffer" in (tmp_path / "logs" / "worker_0.log").read_text()


def test_time_budget_stops_every_rank_at_the_same_step_with_the_rate_annealed(data_dir, tmp_path):
    """Ranks read one clock (AllGather, then max), so a budget cannot end them a step apart (a hang).
    The same job's console (stdout not a terminal) is what a person watching it gets."""
    run, proc = launch_job(data_dir, tmp_path, 2, "parallel.mode=data_parallel", "train.max_steps=null",
                           "train.max_epochs=100000", "train.time_budget_minutes=0.75", "optim.schedule=cosine",
                           "optim.min_lr=0.0", "data.valid_limit=8", "train.progress=true",
                           launcher_args=("--progress_interval", "4"))
    watched_console(proc, tmp_path / "logs")
    last_valid = []
    for rank in (0, 1):
        lines = (tmp_path / "logs" / f"worker_{rank}.log").read_text().splitlines()
        last_valid.append([line for line in lines if ": valid loss" in line][-1].split(":")[0])
    assert last_valid[0] == last_valid[1]  # "step N epoch E" on both ranks
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rates = [r["lr"] for r in records if r["kind"] == "train"]
    assert len(rates) > 20  # the budget, not a step limit, ended the run
    assert max(rates) > 1e-3 and rates[-1] < 0.15 * max(rates)  # decayed toward 0 with the clock
    startup = [r for r in records if r["kind"] == "startup"]  # where the start-up went (trainer/startup.py)
    assert len(startup) == 1 and startup[0]["step"] == 1 and not startup[0]["resumed"]
    phases = ("imports_s", "cluster_s", "data_s", "build_s", "checkpoint_s", "first_update_s")
    assert all(startup[0][p] >= 0 for p in phases) and startup[0]["first_update_s"] > 0
    assert abs(sum(startup[0][p] for p in phases) - startup[0]["total_s"]) < 0.05
    assert startup[0]["imports_s"] > 0.5  # the launcher's spawn time reached the worker: MindSpore's import counted
    assert "[rank 0] start-up: " in proc.stdout and "s from spawn to the first update (imports " in proc.stdout
    meta = json.loads((run / "summary.json").read_text())
    # rank 0's own seconds; the shared clock (the maximum) may be a rank that started a few seconds earlier
    assert 0.75 * 60 - 15 <= meta["train_seconds"] < 0.75 * 60 + 60


def watched_console(proc, logs):
    """Live progress lines, no frame dumps, MindSpore's chatter counted instead of shown, a human end."""
    out = proc.stdout.splitlines()
    progress = [i for i, line in enumerate(out) if line.startswith("[rank 0] epoch ") and "%|" in line]
    end = next(i for i, line in enumerate(out) if line.startswith("[rank 0] training finished:"))
    assert len(progress) >= 3 and progress[0] < end, proc.stdout[-3000:]  # during the run, at an interval
    assert max(len(line) for line in out + proc.stderr.splitlines()) <= 500
    assert not [line for line in out if "\r" in line]
    ms_lines = re.compile(r"\[(WARNING|INFO|DEBUG)\] [A-Z][A-Z0-9_]*\(\d+[,:]")
    assert not [line for line in out + proc.stderr.splitlines() if ms_lines.search(line)]
    assert any(line.startswith("[rank 0] best validation:") for line in out)
    counted = re.search(r"MindSpore's own log lines stay in the logs \((.*)\)", proc.stderr)
    assert counted and re.search(r"worker_0\.log \d+ warnings", counted.group(1)), proc.stderr[-2000:]
    assert ms_lines.search((logs / "worker_0.log").read_text())  # the log file keeps them
