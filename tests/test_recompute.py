"""Activation recompute (`model.recompute`, model/recompute.py): the same updates as keeping every activation.

Three SGD updates (rate 1, no clipping: the weights move by the gradient itself, so a recompute that changed a
gradient, or its scale, shows in the weights) with dropout on, in this process; the launched data-parallel and
tensor-parallel jobs with recompute are in tests/test_parallel_jobs.py.
"""
import mindspore as ms
import numpy as np
import pytest
from mindspore import nn

from conftest import step_worker
from model import build
from model.config import ModelConfig
from model.layers import DecoderLayer, EncoderLayer
from model.attention import ScaledDotProductAttention
from model.recompute import apply_recompute
from model.tokens import PAD
from trainer import cpu
from trainer.build import assemble_step
from trainer.config import ConfigError, PrecisionConfig, load_config

def _model(arch: str, recompute: str):
    ms.set_seed(0)
    cfg = ModelConfig(arch=arch, encoder_layers=1, decoder_layers=2, d_model=32, n_heads=4, d_ff=64, dropout=0.1,
                      attention_dropout=0.1, activation_dropout=0.1, max_positions=64, pre_norm=arch != "encoder_decoder",
                      recompute=recompute)
    return build(cfg, 48, 48, PAD)


def _train(arch, recompute, speedups, precision=PrecisionConfig(), k=1):
    """(per-update gradient norms, final weights) of 3 updates of k micro-batches each."""
    worker = step_worker()
    model = cpu.accelerate(_model(arch, recompute), speedups)
    marked = apply_recompute(model, recompute)
    stepper = assemble_step(model, nn.SGD(model.trainable_params(), learning_rate=1.0), 0.1, 0.0,
                            speedups=speedups, precision=precision, accumulation_steps=k)
    batches = worker.packed_micro_batches(seed=3, k=3 * k)
    norms = [stepper.update(batches[i * k:(i + 1) * k]).grad_norm for i in range(3)]
    return marked, np.array(norms), worker.snapshot([model])


@pytest.mark.slow
@pytest.mark.parametrize("arch, mode, precision, k, speedups", [
    ("encoder_decoder", "full", "O0", 1, True),
    ("encoder_decoder", "selective", "O0", 2, True),  # with accumulation
    ("decoder_only", "full", "O2", 1, False),  # mixed precision: MindSpore's kernels, no CPU speed-ups
    ("decoder_only", "selective", "O0", 1, False),
])
def test_recompute_gives_the_updates_of_keeping_every_activation(arch, mode, precision, k, speedups, tmp_path):
    kernels = cpu.CpuSpeedups(kernel_dir=tmp_path) if speedups else None
    level = PrecisionConfig(level=precision, loss_scale="static", initial_scale=1024.0) if precision != "O0" \
        else PrecisionConfig()
    _, norms, weights = _train(arch, "none", kernels, level, k)
    marked, got_norms, got_weights = _train(arch, mode, kernels, level, k)
    layers = 3 if arch == "encoder_decoder" else 2
    # full: every block; selective: every attention core (the encoder-decoder's decoder blocks have two)
    assert marked == (layers if mode == "full" else (layers + 2 if arch == "encoder_decoder" else layers))
    tolerance = 1e-5 if precision == "O0" else 2e-3  # O2: float16 matmuls rerun in another fusion order
    np.testing.assert_allclose(got_norms, norms, rtol=tolerance)
    assert set(got_weights) == set(weights)
    largest = max(np.abs(w).max() for w in weights.values())
    for name in weights:
        np.testing.assert_allclose(got_weights[name], weights[name], rtol=tolerance, atol=tolerance * largest,
                                   err_msg=name)


def test_recompute_marks_blocks_or_attention_cores_and_nothing_else():
    model = _model("encoder_decoder", "none")
    assert apply_recompute(model, "selective") == 5  # 3 blocks: 1 encoder (1 core), 2 decoder (2 cores each)
    cores = [c for _, c in model.cells_and_names() if isinstance(c, ScaledDotProductAttention)]
    blocks = [c for _, c in model.cells_and_names() if isinstance(c, (EncoderLayer, DecoderLayer))]
    assert all(c._has_config_recompute for c in cores) and not any(c._has_config_recompute for c in blocks)
    model = _model("decoder_only", "none")
    assert apply_recompute(model, "full") == 2
    assert all(c._has_config_recompute for _, c in model.cells_and_names() if isinstance(c, EncoderLayer))
    assert apply_recompute(_model("decoder_only", "none"), "none") == 0


def test_recompute_is_checked_at_load():
    with pytest.raises(ConfigError, match="model.recompute must be one of none, full, selective"):
        load_config("tiny", ["model.recompute=partial"])
    assert load_config("tiny").model.recompute == "none"
