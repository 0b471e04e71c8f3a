"""Checkpoints (atomic, metadata round trip, mismatch errors) and the metrics log on resume."""
import os

import mindspore as ms
import numpy as np
import pytest
from mindspore import nn

from trainer import checkpoint
from trainer.metrics import MetricsLog, read_metrics


def test_save_load_round_trip_with_metadata(tmp_path):
    net = nn.Dense(3, 2)
    path = checkpoint.save(net, tmp_path / "ck" / "last.ckpt", {"step": 7, "epoch": 1, "best_value": 3.5})
    assert path.is_file()
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temporary left behind
    other = nn.Dense(3, 2)
    meta = checkpoint.load_into(other, path)
    assert meta == {"step": 7, "epoch": 1, "best_value": 3.5}
    assert checkpoint.read_meta(path) == meta
    np.testing.assert_array_equal(other.weight.asnumpy(), net.weight.asnumpy())


def test_overwrite_keeps_a_complete_file(tmp_path):
    net = nn.Dense(3, 2)
    path = tmp_path / "best.ckpt"
    checkpoint.save(net, path, {"step": 1})
    net.weight.set_data(ms.Tensor(np.ones((2, 3), np.float32)))
    checkpoint.save(net, path, {"step": 2})
    assert checkpoint.read_meta(path)["step"] == 2
    assert sorted(os.listdir(tmp_path)) == ["best.ckpt"]


def test_wrong_model_is_a_clear_error(tmp_path):
    path = checkpoint.save(nn.Dense(3, 2), tmp_path / "a.ckpt")
    with pytest.raises(checkpoint.CheckpointError, match=r"a\.ckpt lacks .* parameters"):
        checkpoint.load_into(nn.SequentialCell([nn.Dense(3, 2), nn.Dense(2, 2)]), path)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        checkpoint.load_into(nn.Dense(3, 2), tmp_path / "missing.ckpt")


def test_metrics_log_drops_records_after_the_resume_step(tmp_path):
    log = MetricsLog(tmp_path)
    for step in (10, 20, 30):
        log.write("train", step, {"loss": float(step)})
    log.close()
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [10, 20, 30]
    log = MetricsLog(tmp_path, resume_step=20)  # the checkpoint was written at step 20
    log.write("train", 30, {"loss": 1.0})
    log.close()
    records = read_metrics(tmp_path / "metrics.jsonl", "train")
    assert [(r["step"], r["loss"]) for r in records] == [(10, 10.0), (20, 20.0), (30, 1.0)]
    fresh = MetricsLog(tmp_path)  # a new run starts a new log
    fresh.close()
    assert read_metrics(tmp_path / "metrics.jsonl") == []


def test_validation_time_is_left_out_of_tokens_per_second_but_the_tokens_before_it_count(monkeypatch):
    from trainer import loop_tools

    now = [100.0]
    monkeypatch.setattr(loop_tools.time, "time", lambda: now[0])
    window = loop_tools.ThroughputWindow()
    window.add(1000, 5.0, 4.0, 500)
    now[0] += 1.0  # one second of training
    with window.paused():
        now[0] += 50.0  # validation
    window.add(1000, 5.0, 4.0, 500)
    now[0] += 1.0
    record = window.flush()
    assert record["tokens_per_s"] == pytest.approx(1000.0)
    assert record["loss"] == pytest.approx(10.0 / 1000)
