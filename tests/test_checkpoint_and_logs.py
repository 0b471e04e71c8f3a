"""Checkpoints (atomic, metadata round trip, mismatch errors) and the metrics log on resume."""
import os
import subprocess
import sys

import mindspore as ms
import numpy as np
import pytest
from mindspore import nn

from trainer.ckpt import single_file as checkpoint
from trainer.loop.metrics import MetricsLog, read_metrics


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


def _tensorboard_scalars(tb_dir):
    """(tag, step, value) of every scalar in a TensorBoard event directory (TFRecord framing, Event protos)."""
    import struct

    from tensorboardX.proto.event_pb2 import Event

    out = []
    for path in sorted(tb_dir.iterdir()):
        data = path.read_bytes()
        while data:
            (length,) = struct.unpack("<Q", data[:8])
            event = Event.FromString(data[12:12 + length])
            data = data[12 + length + 4:]
            out += [(v.tag, event.step, v.simple_value) for v in event.summary.value]
    return out


def test_metrics_log_writes_tensorboard_scalars_without_importing_torch(tmp_path):
    log = MetricsLog(tmp_path)
    log.write("train", 5, {"loss": 2.5, "lr": 0.001, "note": "text is not a scalar"})
    log.close()
    assert _tensorboard_scalars(tmp_path / "tb") == [("train/loss", 5, 2.5), ("train/lr", 5, pytest.approx(0.001))]
    # tensorboardX imports PyTorch where it is installed (seconds of every rank's start); the trainer must not.
    # A stand-in torch that leaves a mark when imported works whether or not the real one is installed.
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "torch.py").write_text("import os\nopen(os.environ['TORCH_MARK'], 'w').close()\nTensor = object\n")
    mark = tmp_path / "torch-was-imported"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(fake), os.environ.get("PYTHONPATH", "")]),
               TORCH_MARK=str(mark))
    probe = "import sys, trainer.train; import torch; print(torch.Tensor is object)"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "True"  # the stand-in is the torch this interpreter sees, and still importable
    mark.unlink()  # the probe's own import left it; the trainer's imports alone must not:
    proc = subprocess.run([sys.executable, "-c", "import trainer.train"], capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not mark.exists()


def test_validation_time_is_left_out_of_tokens_per_second_but_the_tokens_before_it_count(monkeypatch):
    from trainer.loop import tools as loop_tools

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
