"""Parallel training on CPU with real processes from our launcher: the same losses, gradient norms and weights as
standalone, and sharded checkpoints that resume exactly, under the same layout or another one.

Tiny model, dropout 0.1 (masks by global batch row: every layout draws the standalone run's, model/dropout.py),
one bucket shape, 6 updates, a sharded checkpoint at update 3.

Scale. Adam and clipping are blind to a constant factor on the gradient: a reduction that averages where it should
sum, or divides twice, passes a comparison of losses. So every comparison here checks the per-update `grad_norm`
(taken after the reduction, trainer/step.py), and most jobs train with an update linear in the gradient (LINEAR:
clipping off, Adam's eps 1.0, far above |g| ~1e-3 per element, so Adam's step is lr * m / (sqrt(v) + 1) ~ lr * m):
a wrong scale moves the weights as much as it moves the norm. The packed 2x2 job trains with Adam in its
normalising regime and clipping that acts (clip_norm below the measured gradient norm), the path users train with.

    job                                            compared with           resumed
    dp2 (data_parallel, optimizer sharding,        standalone, same        in one process (dp 2 -> 1,
        --launch_mode store), padded, gradient     settings, no recompute, no recompute, unsharded)
        accumulation 2, LINEAR, full recompute     unsharded
    dp2 without MindSpore's cluster (store         standalone, same        launched, the same layout
        mode, shared-memory sums, the local        settings                (exact)
        group), padded, accumulation 2, LINEAR
    2x2 (hybrid dp 2 x mp 2, optimizer             packed standalone,      launched 2x2 (exact); in one
        sharding over dp sub-groups), packed,      no recompute,           process (mp 2 -> 1, no
        Adam + clipping (one norm from the         unsharded               recompute, unsharded)
        pieces), full recompute (each block's
        forward AllReduce rerun)
    decoder-only 2x2, Llama block (one            decoder-only standalone,
        AllReduce per gradient over dp             no recompute
        sub-groups), packed,
        accumulation 2, LINEAR, selective
        recompute
Standalone runs train in this process; a standalone resume is compared exactly, weights and Adam state included.
The float16 wire is compared with standalone at the step level (tests/test_precision.py) and runs end to end in the
time-budget job here.
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

from conftest import checkpoint_tensors

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]

STEPS = 6
SAVED = 3  # a checkpoint at this step of every run; resumed runs continue from it
BIN = Path(sys.executable).parent
LINEAR = ["optim.clip_norm=0", "optim.eps=1.0", "optim.lr=1.0", "optim.warmup_steps=1"]
# 17 rows a batch (rank 1 of 2 gets a pad row); 600 pairs: 6 updates stay in the first epoch (one validation)
PACKED = ["data.packing=true", "data.pack_length=64", "data.max_tokens=1088", "data.train_limit=600"]
PADDED = ["train.gradient_accumulation_steps=2", *LINEAR]
# Adam normalising the gradient (eps 1e-6, far below |g|) with clipping that acts: the packed gradient norm is
# ~0.7 here. (The recipe's eps 1e-9 would also divide the rounding noise of the keys' bias gradient, exactly zero
# in theory since softmax is blind to that bias, by its own size: up to lr a step in either direction, 4e-5 apart
# after 6 updates in one measured run; eps 1e-6 leaves that noise where it is.)
CLIPPED = ["optim.clip_norm=0.3", "optim.eps=1e-6", *PACKED]
# Llama's block (issue 33): RMSNorm, rotary positions, 4 query heads reading 2 key/value heads (one per rank under
# mp 2), no biases, an untied output layer split by vocabulary rows
DECODER_ONLY = ["model.arch=decoder_only", "model.pre_norm=true", "model.decoder_layers=1", "model.ffn=swiglu",
                "model.norm=rmsnorm", "model.positions=rotary", "model.n_heads=4", "model.n_kv_heads=2",
                "model.bias=false", "model.share_embeddings=false", "model.scale_embeddings=false",
                "train.gradient_accumulation_steps=2", *PACKED, *LINEAR]


def settings(data_dir, out, *sets):
    fixed = ["--config", "tiny", "--data-dir", str(data_dir), "--set", f"train.out_dir={out}",
             "--set", f"train.max_steps={STEPS}", "--set", "train.log_every=1", "--set", "data.buckets=[64]",
             "--set", "model.dropout=0.1", "--set", "eval.max_len_b=2", "--set", f"train.save_every_steps={SAVED}",
             "--set", "train.keep_last=5"]
    for s in sets:
        fixed += ["--set", s]
    return fixed


def overrides(data_dir, out, *sets):
    """`settings` as load_config overrides, for a run in this process."""
    args = settings(data_dir, out, *sets)
    return [f"data.dir={data_dir}", *[v for k, v in zip(args, args[1:]) if k == "--set"]]


def records(out, kind, first=1):
    from trainer.loop.metrics import read_metrics

    return [r for r in read_metrics(Path(out) / "metrics.jsonl", kind) if r["step"] >= first]


def losses(out, first=1):
    return [r["loss"] for r in records(out, "train", first)]


def grad_norms(out, first=1):
    return [r["grad_norm"] for r in records(out, "train", first)]


def standalone_run(data_dir, out, *sets):
    """The module's settings (plus `sets`) trained in this process; returns its run directory."""
    from trainer.config import load_config
    from trainer.train import train

    train(load_config("tiny", overrides(data_dir, out, *sets)))
    assert len(losses(out)) == STEPS
    return out


def launch_job(data_dir, out, workers, *sets, run=None, launcher_args=()):
    """(run directory, finished process) of a launched `mindrun train` job (stdout/stderr are pipes)."""
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    env.pop("GLOG_v", None)  # GLOG_v set would bring MindSpore's log lines back to the console
    run = run or out / "run"
    args = [sys.executable, "-m", "launcher", "--worker_num", str(workers), "--local_worker_num", str(workers),
            "--master_port", "0", "--log_dir", str(out / "logs"), *launcher_args, "-m", "trainer", "train",
            *settings(data_dir, run, *sets)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return run, proc


def launched(data_dir, out, workers, *sets, run=None, plan=None, launcher_args=()):
    """A launched job's run directory, checked to have run `plan` (its worker_0 log's plan line)."""
    run = launch_job(data_dir, out, workers, *sets, run=run, launcher_args=launcher_args)[0]
    if plan:
        assert plan in (out / "logs" / "worker_0.log").read_text()
    return run


def same_run(standalone, parallel, rtol=1e-4):
    """Losses, per-update gradient norms, validation and every weight (the same names) of two runs."""
    assert len(losses(parallel)) == STEPS
    np.testing.assert_allclose(losses(parallel), losses(standalone), rtol=rtol)
    np.testing.assert_allclose(grad_norms(parallel), grad_norms(standalone), rtol=rtol)
    ref_valid, got_valid = records(standalone, "valid"), records(parallel, "valid")  # split over dp ranks, summed
    assert [r["step"] for r in got_valid] == [r["step"] for r in ref_valid] and got_valid
    np.testing.assert_allclose([r["loss"] for r in got_valid], [r["loss"] for r in ref_valid], rtol=rtol)
    assert [r["bleu"] for r in got_valid] == [r["bleu"] for r in ref_valid]
    want, got = checkpoint_tensors(standalone), checkpoint_tensors(parallel)
    assert set(got) == set(want) and got
    for name in want:  # LINEAR: a wrong gradient scale moves these by ~1e-3
        np.testing.assert_allclose(got[name], want[name], rtol=rtol, atol=1e-6, err_msg=name)


def assert_optimizer_sharded(logs, ranks):
    """Each rank's log says it holds half (dp 2) of its Adam moments: the count of its optimizer's Parameters."""
    for rank in ranks:
        line = re.search(r"data-parallel rank (\d) holds (\d+) of (\d+) Adam moment elements",
                         (logs / f"worker_{rank}.log").read_text())
        assert line, rank
        held, whole = int(line.group(2)), int(line.group(3))
        assert whole / 2 <= held < whole / 2 + 2 * 2, (rank, held, whole)  # 1/dp of them, padded to dp


def stopped_at_the_checkpoint(run, into):
    """A copy of `run` as a crash after step SAVED would leave it: step_SAVED its newest checkpoint."""
    shutil.copytree(run, into, symlinks=True, ignore=shutil.ignore_patterns("logs", "tb"))
    for path in (into / "checkpoints").iterdir():
        if path.name.startswith("step_") and path.name != f"step_{SAVED}":
            shutil.rmtree(path)
    return into


def resumed_exactly(straight, resumed, rtol=0.0):
    """The resumed run's steps SAVED+1.. are the straight run's (its log keeps steps 1..SAVED as they were), and
    so are its final weights and optimizer state (moments, step count, beta powers)."""
    assert losses(resumed)[:SAVED] == losses(straight)[:SAVED]
    got, want = losses(resumed, SAVED + 1), losses(straight, SAVED + 1)
    assert len(got) == STEPS - SAVED
    np.testing.assert_allclose(got, want, rtol=rtol, atol=0)
    np.testing.assert_allclose(grad_norms(resumed, SAVED + 1), grad_norms(straight, SAVED + 1), rtol=rtol, atol=0)
    kinds = ("weight", "optimizer")
    a, b = checkpoint_tensors(straight, kinds, STEPS), checkpoint_tensors(resumed, kinds, STEPS)
    assert set(a) == set(b) and any("moment" in n for n in a)
    # resharded: float32 rounding of another summation order, relative to the scale of each kind (weights,
    # moment1, moment2: the keys' bias moments are rounding noise)
    kind = {name: name.split(".")[0] if name.startswith("moment") else "weight" for name in a}
    scale = {k: max(float(np.abs(a[n]).max()) for n in a if kind[n] == k) for k in set(kind.values())}
    for name in a:
        np.testing.assert_allclose(b[name], a[name], rtol=rtol, atol=rtol * scale[kind[name]], err_msg=name)


def resume_here(run, data_dir, *sets):
    """Resume `run` in this process, one rank (whatever layout saved it: resharded on load)."""
    from trainer.config import load_config
    from trainer.train import train

    train(load_config("tiny", [*overrides(data_dir, run, *sets), "train.resume=auto"]))
    return run


# -- data parallel, padded rows, gradient accumulation, an update linear in the gradient -------------------

@pytest.fixture(scope="module")
def standalone(data_dir, tmp_path_factory):
    return standalone_run(data_dir, tmp_path_factory.mktemp("standalone"), *PADDED)


@pytest.fixture(scope="module")
def data_parallel(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("dp2")
    # joined through rank 0's store (the README job's launch mode); the 2x2 jobs below join through the scheduler
    return launched(data_dir, out, 2, "parallel.mode=data_parallel", "model.recompute=full",
                    "parallel.optimizer_shard=true", *PADDED,
                    plan="data_parallel 2 x model_parallel 1", launcher_args=("--launch_mode", "store"))


def test_data_parallel_with_accumulation_matches_standalone(standalone, data_parallel):
    assert not (data_parallel.parent / "logs" / "scheduler.log").exists()  # store mode: no scheduler process
    log = (data_parallel.parent / "logs" / "worker_0.log").read_text()
    assert "gradients reduce-scattered in one flat float32 buffer, Adam's moments sharded" in log
    assert "model.recompute=full on the CPU gives the same gradients" in log  # recompute was on
    assert_optimizer_sharded(data_parallel.parent / "logs", ranks=(0, 1))
    for rank in (0, 1):  # each data-parallel rank decoded half of the validation split
        log = (data_parallel.parent / "logs" / f"worker_{rank}.log").read_text()
        assert f"validation: data-parallel rank {rank} decodes 20 of 40 sentences" in log
    same_run(standalone, data_parallel)


# the launcher's registration backstop (store mode: every worker connects to rank 0's store) ends a job whose workers
# neither connect nor say they run without the cluster at --cluster_time_out plus as much again (at most 20 s)
LOCAL_JOB = ("--launch_mode", "store", "--cluster_time_out", "15")


@pytest.fixture(scope="module")
def without_cluster(data_dir, tmp_path_factory):
    """The README job's shape: data parallel 2 in store mode, gradients summed through shared memory; so no
    MindSpore collective, and the ranks never form MindSpore's cluster (trainer/parallel/context.py): the run
    clock, validation's sums and the checkpoint agreements go through the local socket group."""
    out = tmp_path_factory.mktemp("dp2_local")
    return launched(data_dir, out, 2, "parallel.mode=data_parallel", *PADDED, plan="data_parallel 2 x model_parallel 1",
                    launcher_args=LOCAL_JOB)


def test_a_one_host_cpu_job_runs_without_mindspore_cluster_and_matches_standalone(standalone, without_cluster):
    logs = without_cluster.parent / "logs"
    log = (logs / "worker_0.log").read_text()
    assert "running without MindSpore's cluster" in log and "through shared memory on this host" in log
    for rank in (0, 1):  # each told the launcher, whose backstop would otherwise end the job (launcher/registration.py)
        assert (logs / f"worker_{rank}.log.no-cluster").exists()
    for rank in (0, 1):  # validation split over the ranks, its sums through the local group
        log = (without_cluster.parent / "logs" / f"worker_{rank}.log").read_text()
        assert f"validation: data-parallel rank {rank} decodes 20 of 40 sentences" in log
    startup = records(without_cluster, "startup")
    assert len(startup) == 1 and startup[0]["cluster_s"] < 1.0  # MindSpore's own join polls 3 s (launcher/join.py)
    same_run(standalone, without_cluster)


def test_a_job_without_mindspore_cluster_resumes_exactly_launched(without_cluster, data_dir, tmp_path):
    """Its checkpoint agreement (which step directory verifies on every rank) goes through the local group."""
    run = stopped_at_the_checkpoint(without_cluster, tmp_path / "run")
    launched(data_dir, tmp_path, 2, "parallel.mode=data_parallel", *PADDED, "train.resume=auto", run=run,
             launcher_args=LOCAL_JOB)
    assert "running without MindSpore's cluster" in (tmp_path / "logs" / "worker_0.log").read_text()
    resumed_exactly(without_cluster, run)


def test_standalone_resumes_exactly_with_dropout_and_accumulation(standalone, data_dir, tmp_path):
    run = resume_here(stopped_at_the_checkpoint(standalone, tmp_path / "run"), data_dir, *PADDED)
    resumed_exactly(standalone, run)


def test_a_data_parallel_checkpoint_resumes_in_one_process(data_parallel, data_dir, tmp_path):
    run = resume_here(stopped_at_the_checkpoint(data_parallel, tmp_path / "run"), data_dir, *PADDED)
    resumed_exactly(data_parallel, run, rtol=1e-5)


def test_a_sharded_checkpoint_chains_through_layouts_moments_included(data_parallel, data_dir, tmp_path):
    """Issue 32: dp 2 with sharded moments (saved as per-rank pieces) -> one process, unsharded (to step 4) ->
    dp 2 unsharded (to step 5) -> model parallel 2 (to step 6), each hop resuming the previous one's checkpoint:
    steps 4-6 are the straight sharded run's (losses, gradient norms, final weights and moments: LINEAR makes
    the update follow Adam's moments, so a moment lost or mis-sliced on the way moves the weights)."""
    run = stopped_at_the_checkpoint(data_parallel, tmp_path / "run")
    manifest = json.loads((run / "checkpoints" / f"step_{SAVED}" / "manifest.json").read_text())
    assert sum(name.startswith("zero-") for name in manifest["files"]) == 2  # the pieces, one file a rank
    resume_here(run, data_dir, *PADDED, "train.max_steps=4")
    launched(data_dir, tmp_path / "dp2", 2, "parallel.mode=data_parallel", *PADDED, "train.resume=auto",
             "train.max_steps=5", run=run)
    launched(data_dir, tmp_path / "mp2", 2, "parallel.mode=hybrid", "parallel.model_parallel=2", *PADDED,
             "train.resume=auto", run=run, plan="model_parallel 2")
    np.testing.assert_allclose(losses(run, SAVED + 1), losses(data_parallel, SAVED + 1), rtol=1e-5)
    np.testing.assert_allclose(grad_norms(run, SAVED + 1), grad_norms(data_parallel, SAVED + 1), rtol=1e-5)
    assert [r["step"] for r in records(run, "train")] == list(range(1, STEPS + 1))
    kinds = ("weight", "optimizer")
    a, b = checkpoint_tensors(data_parallel, kinds, STEPS), checkpoint_tensors(run, kinds, STEPS)
    assert set(a) == set(b) and any(n.startswith("moment1.") for n in a)
    for name in a:
        np.testing.assert_allclose(b[name], a[name], rtol=1e-4, atol=1e-6, err_msg=name)


# -- data x tensor parallel, packed rows, Adam with clipping that acts -----------------------------------

@pytest.fixture(scope="module")
def packed_standalone(data_dir, tmp_path_factory):
    return standalone_run(data_dir, tmp_path_factory.mktemp("packed_standalone"), *CLIPPED)


@pytest.fixture(scope="module")
def two_by_two(data_dir, tmp_path_factory):
    """Packed rows (segment ids and positions) over 2 data-parallel groups of 2 tensor-parallel ranks, Adam's
    moments sharded over each data-parallel sub-group (parallel.optimizer_shard), full recompute."""
    out = tmp_path_factory.mktemp("2x2")
    run = launched(data_dir, out, 4, "parallel.model_parallel=2", "parallel.data_parallel=2",
                   "model.recompute=full", "parallel.optimizer_shard=true", *CLIPPED,
                   plan="data_parallel 2 x model_parallel 2")
    assert_optimizer_sharded(out / "logs", ranks=(0, 1, 2, 3))
    return run


def test_data_and_tensor_parallel_2x2_with_clipping_matches_standalone(packed_standalone, two_by_two):
    assert min(grad_norms(packed_standalone)) > 0.3  # clipping acted on every update
    same_run(packed_standalone, two_by_two)


def test_a_2x2_job_resumes_exactly_under_its_layout(two_by_two, data_dir, tmp_path):
    run = stopped_at_the_checkpoint(two_by_two, tmp_path / "run")
    launched(data_dir, tmp_path, 4, "parallel.model_parallel=2", "parallel.data_parallel=2",
             "model.recompute=full", "parallel.optimizer_shard=true", *CLIPPED, "train.resume=auto", run=run)
    resumed_exactly(two_by_two, run)


def test_a_2x2_checkpoint_resumes_in_one_process(two_by_two, data_dir, tmp_path):
    """Saved split over 2 tensor-parallel ranks (weights and Adam moments), resumed whole: resharded on load."""
    run = resume_here(stopped_at_the_checkpoint(two_by_two, tmp_path / "run"), data_dir, *CLIPPED)
    resumed_exactly(two_by_two, run, rtol=1e-5)


# -- the decoder-only model ---------------------------------------------------------------

def test_decoder_only_under_data_and_model_parallel_2x2_matches_standalone(data_dir, tmp_path):
    """The decoder-only model with Llama's block on packed rows (source + target in one causal sequence) through
    the same seam: data parallel x hybrid tensor parallel (vocabulary-parallel embedding and untied output rows,
    SwiGLU's two column-split projections, grouped-query attention with one key/value head per rank, rotary
    positions per packed segment, replicated RMSNorm scales), one AllReduce per gradient over each data-parallel
    sub-group (parallel.grad_reduce=per_tensor), selective recompute, equals standalone."""
    ref = standalone_run(data_dir, tmp_path / "standalone", *DECODER_ONLY)
    run = launched(data_dir, tmp_path / "job", 4, "parallel.model_parallel=2", "parallel.data_parallel=2",
                   "model.recompute=selective", "parallel.grad_reduce=per_tensor", *DECODER_ONLY,
                   plan="data_parallel 2 x model_parallel 2")
    assert "one flat" not in (tmp_path / "job" / "logs" / "worker_0.log").read_text()
    same_run(ref, run)


# -- the time budget, the console -----------------------------------------------------------------------------

BUDGET_MINUTES = 0.4  # the budget counts the first update's compile: 24 s leave 20+ updates under load


def test_time_budget_stops_every_rank_at_the_same_step_with_the_rate_annealed(data_dir, tmp_path):
    """Ranks read one clock (a sum of a row per rank, then max), so a budget cannot end them a step apart (a hang).
    The same job's console (stdout not a terminal) is what a person watching it gets. Its gradients go over the
    wire in float16 (under a static loss scale): that option end to end."""
    run, proc = launch_job(data_dir, tmp_path, 2, "parallel.mode=data_parallel", "train.max_steps=null",
                           "train.max_epochs=100000", f"train.time_budget_minutes={BUDGET_MINUTES}",
                           "optim.schedule=cosine", "optim.warmup_steps=5", "optim.min_lr=0.0", "data.valid_limit=8",
                           "train.progress=true",
                           "parallel.grad_reduce_dtype=float16", "precision.loss_scale=static",
                           "precision.initial_scale=1024", launcher_args=("--progress_interval", "2"))
    assert "gradients summed in one flat float16 buffer" in (tmp_path / "logs" / "worker_0.log").read_text()
    watched_console(proc, tmp_path / "logs")
    last_valid = []
    for rank in (0, 1):
        lines = (tmp_path / "logs" / f"worker_{rank}.log").read_text().splitlines()
        last_valid.append([line for line in lines if ": valid loss" in line][-1].split(":")[0])
    assert last_valid[0] == last_valid[1]  # "step N epoch E" on both ranks
    train_records = records(run, "train")
    rates = [r["lr"] for r in train_records]
    assert len(rates) > 20 and all(np.isfinite(r["loss"]) for r in train_records)  # the budget ended the run
    # decayed with the clock: never rising after the warm-up's peak, and well below it at the end. The clock is
    # read at most ~5 s apart (a fifth of this budget), further under load, so the end is not near 0 (0.6 of the
    # peak seen with a second test job beside it; ~0.1 alone)
    peak = rates.index(max(rates))
    assert max(rates) > 1e-3 and all(b <= a for a, b in zip(rates[peak:], rates[peak + 1:])), rates
    assert rates[-1] < 0.8 * max(rates), rates
    startup = records(run, "startup")  # where the start-up went (trainer/loop/startup.py)
    assert len(startup) == 1 and startup[0]["step"] == 1 and not startup[0]["resumed"]
    phases = ("imports_s", "cluster_s", "data_s", "build_s", "checkpoint_s", "first_update_s")
    assert all(startup[0][p] >= 0 for p in phases) and startup[0]["first_update_s"] > 0
    assert abs(sum(startup[0][p] for p in phases) - startup[0]["total_s"]) < 0.05
    assert startup[0]["imports_s"] > 0.5  # the launcher's spawn time reached the worker: MindSpore's import counted
    assert "[rank 0] start-up: " in proc.stdout and "s from spawn to the first update (imports " in proc.stdout
    meta = json.loads((run / "summary.json").read_text())
    # rank 0's own seconds; the shared clock (the maximum) may be a rank that started a few seconds earlier
    budget = BUDGET_MINUTES * 60
    assert budget - 10 <= meta["train_seconds"] < budget + 40


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
