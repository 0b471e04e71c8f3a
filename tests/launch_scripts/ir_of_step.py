"""Compile and run one training update of a small model with dropout (the Ascend path: no CPU speed-ups), for
tests/test_ascend_ops.py, which runs this with MS_DEV_SAVE_GRAPHS set and reads the operators in the IR.

    python ir_of_step.py ARCH
"""
import sys

import mindspore as ms
from mindspore import nn

import step_worker as worker  # beside this script (a script's directory is on sys.path), as `step_worker`
from model import build
from model.config import ModelConfig
from model.tokens import PAD
from trainer.build import assemble_step

ms.set_context(mode=ms.GRAPH_MODE)
ms.set_seed(0)
cfg = ModelConfig(arch=sys.argv[1], encoder_layers=1, decoder_layers=1, d_model=32, n_heads=4, d_ff=64, dropout=0.1,
                  attention_dropout=0.1, activation_dropout=0.1, max_positions=64, pre_norm=True)
model = build(cfg, 48, 48, PAD)
stepper = assemble_step(model, nn.Adam(model.trainable_params(), learning_rate=1e-3), 0.1, 1.0, speedups=None)
stepper.update(worker.packed_micro_batches(seed=3, k=1))
print("compiled and ran one update")
