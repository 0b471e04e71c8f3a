"""Parallel training on CPU with real processes from our launcher: the same losses and weights as standalone.

Tiny model, dropout off, one bucket shape, 6 steps; each job is compared with one standalone run.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]

STEPS = 6
BIN = Path(sys.executable).parent
KEY_BIAS_BOUND = 0.003 * sum(range(1, STEPS + 1)) / 20  # tiny recipe: lr 3e-3, 20 warm-up steps


def settings(data_dir, out):
    return ["--config", "tiny", "--data-dir", str(data_dir), "--set", f"train.out_dir={out}",
            "--set", f"train.max_steps={STEPS}", "--set", "train.log_every=1", "--set", "data.buckets=[64]",
            "--set", "model.dropout=0.0", "--set", "eval.max_len_b=2"]


def losses(out):
    records = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if r["kind"] == "train"]


def weights(out):
    import mindspore as ms

    params = ms.load_checkpoint(str(Path(out) / "checkpoints" / "last.ckpt"))
    return {k: v.asnumpy() for k, v in params.items() if not k.startswith(("meta/", "moment", "beta", "global_step",
                                                                          "learning_rate"))}


@pytest.fixture(scope="module")
def standalone(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("standalone")
    proc = subprocess.run([sys.executable, "-m", "trainer", "train", *settings(data_dir, out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(losses(out)) == STEPS
    return out


def launched(data_dir, out, workers, *sets):
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    args = [sys.executable, "-m", "launcher", "--worker_num", str(workers), "--local_worker_num", str(workers),
            "--master_port", "0", "--log_dir", str(out / "logs"), "-m", "trainer", "train",
            *settings(data_dir, out / "run")]
    for s in sets:
        args += ["--set", s]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return out / "run"


def same_run(standalone, parallel):
    ref, got = losses(standalone), losses(parallel)
    assert len(got) == STEPS
    np.testing.assert_allclose(got, ref, rtol=1e-4)
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


def test_data_parallel_matches_standalone(standalone, data_dir, tmp_path):
    run = launched(data_dir, tmp_path, 2, "parallel.mode=data_parallel")
    assert "data_parallel 2 x model_parallel 1" in (tmp_path / "logs" / "worker_0.log").read_text()
    same_run(standalone, run)


def test_packed_data_parallel_matches_packed_standalone(data_dir, tmp_path):
    """Packed rows (segment ids and positions) split across data-parallel ranks like padded ones.

    17 rows of 64 over 2 ranks: the second rank's share is padded with an empty row."""
    packing = ["data.packing=true", "data.pack_length=64", "data.max_tokens=1088"]
    ref = tmp_path / "standalone"
    args = settings(data_dir, ref)
    for s in packing:
        args += ["--set", s]
    proc = subprocess.run([sys.executable, "-m", "trainer", "train", *args], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    same_run(ref, launched(data_dir, tmp_path / "dp", 2, "parallel.mode=data_parallel", *packing))


def test_hybrid_model_parallel_matches_standalone(standalone, data_dir, tmp_path):
    run = launched(data_dir, tmp_path, 2, "parallel.model_parallel=2")
    assert "hybrid: data_parallel 1 x model_parallel 2" in (tmp_path / "logs" / "worker_0.log").read_text()
    same_run(standalone, run)


def test_data_and_model_parallel_2x2_matches_standalone(standalone, data_dir, tmp_path):
    run = launched(data_dir, tmp_path, 4, "parallel.model_parallel=2", "parallel.data_parallel=2")
    same_run(standalone, run)


def test_time_budget_stops_every_rank_at_the_same_step_with_the_rate_annealed(data_dir, tmp_path):
    """Ranks read one clock (AllGather, then max), so a budget cannot end them a step apart (a hang)."""
    run = launched(data_dir, tmp_path, 2, "parallel.mode=data_parallel", "train.max_steps=null",
                   "train.max_epochs=100000", "train.time_budget_minutes=0.75", "optim.schedule=cosine",
                   "optim.min_lr=0.0", "data.valid_limit=8")
    last_valid = []
    for rank in (0, 1):
        lines = (tmp_path / "logs" / f"worker_{rank}.log").read_text().splitlines()
        last_valid.append([line for line in lines if ": valid loss" in line][-1].split(":")[0])
    assert last_valid[0] == last_valid[1]  # "step N epoch E" on both ranks
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rates = [r["lr"] for r in records if r["kind"] == "train"]
    assert len(rates) > 20  # the budget, not a step limit, ended the run
    assert max(rates) > 1e-3 and rates[-1] < 0.15 * max(rates)  # decayed toward 0 with the clock
    meta = json.loads((run / "summary.json").read_text())
    # rank 0's own seconds; the shared clock (the maximum) may be a rank that started a few seconds earlier
    assert 0.75 * 60 - 15 <= meta["train_seconds"] < 0.75 * 60 + 60
