"""No operator on the training step that Ascend runs only on its AI CPU (issue 35).

An AICPU-only operator costs a host-side launch each call: RightShift is registered only as an AICPU kernel by
MindSpore (ops/_op_impl/aicpu) and CANN routes it to the AI CPU on every chip but Ascend 950, and the counter-hash
dropout called it three times per dropout site (about 96 host launches per forward of base_ascend). The step is
compiled here on the CPU with MindSpore's IR dump on, and the operators of its final graphs are checked against
the deny-list. The same graph front end builds the Ascend graph, so an operator absent here is absent there
(backend passes may add operators of their own, which this cannot see)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent / "launch_scripts" / "ir_of_step.py"
# registered by MindSpore 2.10 as AICPU kernels only, with no AICore (TBE/op_api) kernel on Atlas A2
AICPU_ONLY = ("RightShift", "LeftShift")

pytestmark = pytest.mark.slow


def step_operators(arch: str, ir_dir: Path) -> set:
    env = dict(os.environ, MS_DEV_SAVE_GRAPHS="1", MS_DEV_SAVE_GRAPHS_PATH=str(ir_dir))
    proc = subprocess.run([sys.executable, str(SCRIPT), arch], capture_output=True, text=True, timeout=600, env=env,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    finals = sorted(ir_dir.glob("hwopt_end*TrainStep*.ir"))
    assert finals, sorted(p.name for p in ir_dir.iterdir())[:20]
    text = "".join(p.read_text(errors="replace") for p in finals)
    return set(re.findall(r"PrimFunc_([A-Za-z0-9]+)", text)) | set(re.findall(r"= ([A-Z][A-Za-z0-9]+)\(", text))


@pytest.mark.parametrize("arch", ["encoder_decoder", "decoder_only"])
def test_the_training_step_has_no_aicpu_only_operator(arch, tmp_path):
    ops = step_operators(arch, tmp_path)
    assert {"MatMul", "BitwiseXor"} <= ops  # the dump was read: the step and the dropout hash are there
    assert not ops & set(AICPU_ONLY), sorted(ops & set(AICPU_ONLY))
