"""The parallel planner's errors, mode choice, `mindrun plan`, and the layout applied to one model."""
import subprocess
import sys

import numpy as np
import pytest

from trainer.config import ConfigError, load_config
from trainer.parallel.plan import make_plan


def cfg(*sets, recipe="tiny"):
    return load_config(recipe, list(sets))


@pytest.mark.parametrize("sets,world,backend,message", [
    (["parallel.data_parallel=2", "parallel.model_parallel=2"], 2, "CPU", "= 4, but the job has 2 workers"),
    (["parallel.model_parallel=3"], 4, "CPU", "cannot be split into model_parallel 3"),
    (["parallel.model_parallel=4"], 4, "CPU", "model.n_heads (2) is not divisible by parallel.model_parallel (4)"),
    (["parallel.model_parallel=2", "model.d_ff=65"], 2, "CPU", "model.d_ff (65) is not divisible"),
    (["parallel.model_parallel=2", "data.vocab_size=401"], 2, "CPU", "data.vocab_size (401) is not divisible"),
    (["parallel.pipeline_stages=2", "parallel.mode=semi_auto", "parallel.micro_batches=2"], 2, "Ascend",
     "must each be divisible by parallel.pipeline_stages (2)"),
    (["parallel.pipeline_stages=2", "parallel.mode=hybrid"], 2, "CPU", "needs parallel.mode=semi_auto"),
    (["parallel.optimizer_shard=true", "parallel.mode=data_parallel"], 2, "CPU", "optimizer_shard needs"),
    (["parallel.mode=semi_auto"], 2, "CPU", "cannot compile on CPU"),
    (["parallel.mode=standalone"], 2, "CPU", "runs one process, but the job has 2 workers"),
    (["parallel.mode=data_parallel", "parallel.model_parallel=2"], 2, "CPU", "use parallel.mode=hybrid"),
    (["data.max_tokens=128", "data.buckets=[64]"], 4, "CPU", "holds 2 rows"),
])
def test_planner_errors_say_how_to_fix(sets, world, backend, message):
    with pytest.raises(ConfigError) as err:
        make_plan(cfg(*sets), world, backend)
    assert message in str(err.value)


def test_pipeline_needs_enough_micro_batches():
    base = cfg("parallel.pipeline_stages=2", "parallel.mode=semi_auto", recipe="base")
    with pytest.raises(ConfigError, match="micro_batches .1. must be at least pipeline_stages .2."):
        make_plan(base, 2, "Ascend")


def test_real_vocabulary_is_checked_once_known():
    with pytest.raises(ConfigError, match="the vocabulary .401. is not divisible"):
        make_plan(cfg("parallel.model_parallel=2"), 2, "CPU", vocab_size=401)


@pytest.mark.parametrize("sets,world,backend,mode,dp", [
    ([], 1, "CPU", "standalone", 1),
    ([], 2, "CPU", "data_parallel", 2),
    (["parallel.model_parallel=2"], 4, "CPU", "hybrid", 2),
    (["parallel.model_parallel=2"], 8, "Ascend", "semi_auto", 4),
])
def test_auto_mode_follows_the_backend(sets, world, backend, mode, dp):
    plan = make_plan(cfg(*sets), world, backend)
    assert (plan.mode, plan.data_parallel) == (mode, dp)
    assert plan.data_parallel * plan.model_parallel * plan.pipeline_stages == world


def test_plan_command_prints_base_strategies():
    proc = subprocess.run([sys.executable, "-m", "trainer", "plan", "--config", "base", "--world-size", "8",
                           "--set", "parallel.model_parallel=2"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "semi_auto: data_parallel 4 x model_parallel 2" in out
    # every sharded operator of the 6+6 base model: 4 attention projections x 18 attentions, 2 FFN x 12 layers
    assert out.count(".matmul ") == 18 * 4 + 12 * 2 and "logits_matmul" in out
    assert "decoder.5.cross_attn.w_o.matmul" in out and "((4, 2), (1, 2))" in out
    assert "encoder.0.ffn.w1.matmul" in out and "((4, 1), (2, 1))" in out
    bad = subprocess.run([sys.executable, "-m", "trainer", "plan", "--config", "base", "--world-size", "8",
                          "--set", "parallel.model_parallel=3"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "model_parallel 3" in bad.stderr


def test_semi_auto_strategies_land_on_the_primitives():
    from model import Transformer
    from model.parallel.layout import apply_semi_auto

    c = cfg(recipe="tiny").model
    model = Transformer(c, 400, 400, 0)
    rows = apply_semi_auto(model, 2, 2)
    attn = model.encoder[0].self_attn
    assert attn.w_q.matmul.attrs["in_strategy"] == ((2, 1), (2, 1))
    assert attn.w_o.matmul.attrs["in_strategy"] == ((2, 2), (1, 2))
    assert attn.attention.qk.attrs["in_strategy"] == ((2, 2, 1, 1), (2, 2, 1, 1))
    assert model.decoder[0].ffn.w2.matmul.attrs["in_strategy"] == ((2, 2), (1, 2))
    assert model.logits_matmul.attrs["in_strategy"] == ((2, 1), (2, 1))
    assert len(rows) > 20


def test_shard_rows_covers_the_global_batch():
    from trainer.parallel.context import ParallelContext
    from trainer.parallel.data import shard_rows

    plan = make_plan(cfg(), 3, "CPU")
    batch = np.arange(7 * 4).reshape(7, 4) + 10
    parts = [shard_rows((batch,), ParallelContext(plan, rank=r, dp_rank=r))[0] for r in range(3)]
    assert all(p.shape == (3, 4) for p in parts)
    joined = np.concatenate(parts)
    assert (joined[:7] == batch).all() and (joined[7:] == 0).all()  # padding rows are PAD


def test_hybrid_layout_keeps_every_parameter_name_and_splits_the_right_axis():
    from model import Transformer
    from model.parallel.layout import apply_hybrid

    model = Transformer(cfg(recipe="tiny").model, 400, 400, 0)
    full = {p.name: p.asnumpy() for p in model.trainable_params()}
    applied = apply_hybrid(model, "mp_0", 1, 2)
    split = {p.name: p.asnumpy() for p in model.trainable_params()}
    assert sorted(split) == sorted(full)  # unique and unchanged, so shards gather back by name
    assert "encoder.0.self_attn.w_q.weight" in applied.shard_axis
    for name, value in split.items():
        axis = applied.shard_axis.get(name)
        if axis is None:
            np.testing.assert_array_equal(value, full[name], err_msg=name)
        else:
            n = full[name].shape[axis] // 2
            expected = full[name][n:] if axis == 0 else full[name][:, n:]  # rank 1's half
            np.testing.assert_array_equal(value, expected, err_msg=name)


def test_hybrid_layout_enters_the_vocabulary_region_once():
    """Tied: the output matmul uses the embedding table, so `before_logits` copies x into the
    group; untied: the column-parallel out_proj does that itself, and a second copy would
    all-reduce the gradient twice."""
    from mindspore import nn

    from model import Transformer
    from model.parallel.layout import apply_hybrid
    from model.parallel.mappings import CopyToGroup

    tied = Transformer(cfg(recipe="tiny").model, 400, 400, 0)
    apply_hybrid(tied, "mp_0", 0, 2)
    assert isinstance(tied.before_logits, CopyToGroup)
    untied = Transformer(cfg("model.share_embeddings=false", recipe="tiny").model, 400, 400, 0)
    apply_hybrid(untied, "mp_0", 0, 2)
    assert isinstance(untied.before_logits, nn.Identity)
