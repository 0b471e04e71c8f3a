"""Compile and run one training update of a small model with dropout (the Ascend path: no CPU speed-ups), for
tests/test_ascend_ops.py, which runs this with MS_DEV_SAVE_GRAPHS set and reads the operators in the IR.

    python ir_of_step.py ARCH
"""
import importlib.util
import sys
from pathlib import Path

import mindspore as ms
from mindspore import nn

from model import build
from model.config import ModelConfig
from model.tokens import PAD
from trainer.build import assemble_step

HERE = Path(__file__).parent
spec = importlib.util.spec_from_file_location("step_worker", HERE / "step_worker.py")
worker = importlib.util.module_from_spec(spec)
sys.modules["step_worker"] = worker  # graph mode resolves the module of a Cell it compiles by name
spec.loader.exec_module(worker)

ms.set_context(mode=ms.GRAPH_MODE)
ms.set_seed(0)
cfg = ModelConfig(arch=sys.argv[1], encoder_layers=1, decoder_layers=1, d_model=32, n_heads=4, d_ff=64, dropout=0.1,
                  attention_dropout=0.1, activation_dropout=0.1, max_positions=64, pre_norm=True)
model = build(cfg, 48, 48, PAD)
stepper = assemble_step(model, nn.Adam(model.trainable_params(), learning_rate=1e-3), 0.1, 1.0, speedups=None)
stepper.update(worker.packed_micro_batches(seed=3, k=1))
print("compiled and ran one update")
