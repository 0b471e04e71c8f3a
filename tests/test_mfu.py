"""Model FLOPs utilisation: the trainer's logged TFLOP/s and MFU use the planner's FLOPs per token and the
device peak from the config or from the cluster file (through the launcher's environment)."""
import json

import pytest

from launcher import environment, ranks
from launcher.spec import resolve
from trainer.config import load_config
from trainer.mfu import PEAK_ENV, ModelFlops
from trainer.parallel.sizing import flops_per_token, sequence_length
from trainer.loop.summary import describe


def test_a_logged_rate_becomes_tflops_per_device_and_mfu(monkeypatch):
    monkeypatch.delenv(PEAK_ENV, raising=False)
    cfg = load_config("gpt_hour")
    per_token = flops_per_token(cfg.model, 8000, sequence_length(cfg))
    assert ModelFlops(cfg, 8000, 2).record(1e6) == {"tflops_per_device": round(1e6 * per_token / 2 / 1e12, 4)}
    monkeypatch.setenv(PEAK_ENV, "10")  # what `mindrun launch --cluster` sets
    record = ModelFlops(cfg, 8000, 2).record(1e6)
    assert record["mfu"] == round(record["tflops_per_device"] / 10, 4)
    configured = load_config("gpt_hour", ["train.device_peak_tflops=20"])  # the config wins
    assert ModelFlops(configured, 8000, 2).record(1e6)["mfu"] == round(record["tflops_per_device"] / 20, 4)
    monkeypatch.setenv(PEAK_ENV, "fast")
    with pytest.raises(ValueError, match=f"{PEAK_ENV}='fast' is not a number"):
        ModelFlops(cfg, 8000, 2)


def test_the_cluster_files_peak_reaches_the_workers(tmp_path):
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text((open("cluster_configs/local_cpu_2.yaml").read()) + "device_peak_tflops: 1.5\n")
    spec = resolve({"script": __file__, "cluster": str(cluster)}, {})
    assert environment.worker_env(spec, ranks.dynamic_workers(spec)[0], {})[PEAK_ENV] == "1.5"
    plain = resolve({"script": __file__, "worker_num": 2, "local_worker_num": 2}, {})
    assert PEAK_ENV not in environment.worker_env(plain, ranks.dynamic_workers(plain)[0], {})


def test_the_summary_names_the_mfu(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(
        json.dumps({"kind": "train", "step": s, "tokens_per_s": 10.0, "tflops_per_device": t, "mfu": m}) + "\n"
        for s, t, m in ((20, 0.1, 0.01), (40, 0.5, 0.05), (60, 0.7, 0.07))))
    lines = describe({"steps": 60, "epochs": 1.5, "train_seconds": 60.0, "interrupted_by_signal": None,
                      "run_dir": str(run), "best_checkpoint": None, "last_checkpoint": None})
    assert "model FLOPs: 0.6 TFLOP/s per device (median), MFU 6.0% of the device's peak" in lines
