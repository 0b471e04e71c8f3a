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
     "pipeline parallelism is not wired"),
    (["parallel.pipeline_stages=2", "parallel.mode=hybrid"], 2, "CPU", "pipeline parallelism is not wired"),
    (["parallel.micro_batches=2", "parallel.mode=data_parallel"], 2, "CPU", "use gradient accumulation"),
    (["parallel.micro_batches=2"], 8, "Ascend", "use gradient accumulation"),
    (["parallel.optimizer_shard=true", "parallel.mode=hybrid", "parallel.model_parallel=2"], 2, "CPU",
     "parallel.optimizer_shard splits Adam's moments over the data-parallel ranks, but this layout has data_parallel 1"),
    (["parallel.mode=semi_auto"], 2, "CPU", "cannot compile on CPU"),
    (["parallel.mode=standalone"], 2, "CPU", "runs one process, but the job has 2 workers"),
    (["parallel.mode=data_parallel", "parallel.model_parallel=2"], 2, "CPU", "use parallel.mode=hybrid"),
    (["data.max_tokens=128", "data.buckets=[64]"], 4, "CPU", "holds 2 rows"),
])
def test_planner_errors_say_how_to_fix(sets, world, backend, message):
    with pytest.raises(ConfigError) as err:
        make_plan(cfg(*sets), world, backend)
    assert message in str(err.value)


def test_real_vocabulary_is_checked_once_known():
    with pytest.raises(ConfigError, match="the vocabulary .401. is not divisible"):
        make_plan(cfg("parallel.model_parallel=2"), 2, "CPU", vocab_size=401)


@pytest.mark.parametrize("sets,world,backend,mode,dp", [
    ([], 1, "CPU", "standalone", 1),
    ([], 2, "CPU", "data_parallel", 2),
    (["parallel.model_parallel=2"], 4, "CPU", "hybrid", 2),
    ([], 8, "Ascend", "data_parallel", 8),
    (["parallel.model_parallel=2"], 8, "Ascend", "hybrid", 4),
    (["parallel.model_parallel=2"], 8, "GPU", "hybrid", 4),
])
def test_auto_mode_picks_the_verified_explicit_collectives_on_every_backend(sets, world, backend, mode, dp):
    plan = make_plan(cfg(*sets), world, backend)
    assert (plan.mode, plan.data_parallel) == (mode, dp)
    assert plan.data_parallel * plan.model_parallel * plan.pipeline_stages == world


def test_plan_command_prints_base_strategies():
    proc = subprocess.run([sys.executable, "-m", "trainer", "plan", "--config", "base", "--world-size", "8",
                           "--set", "parallel.model_parallel=2", "--strategies"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "hybrid: data_parallel 4 x model_parallel 2" in out and "has not run" not in out
    # every sharded operator of the 6+6 base model: 4 attention projections x 18 attentions, 2 FFN x 12
    # layers, the output projection
    assert out.count(".matmul ") == 18 * 4 + 12 * 2 + 1 and "logits.matmul " in out
    assert "decoder.5.cross_attn.w_o.matmul" in out and "((4, 2), (1, 2))" in out
    assert "encoder.0.ffn.w1.matmul" in out and "((4, 1), (2, 1))" in out
    bad = subprocess.run([sys.executable, "-m", "trainer", "plan", "--config", "base", "--world-size", "8",
                          "--set", "parallel.model_parallel=3"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "model_parallel 3" in bad.stderr
    semi = subprocess.run([sys.executable, "-m", "trainer", "plan", "--config", "base", "--world-size", "8",
                           "--set", "parallel.mode=semi_auto"], capture_output=True, text=True, timeout=300)
    assert semi.returncode == 0 and "has not run on Ascend or GPU hardware" in semi.stdout


def test_semi_auto_strategies_land_on_the_primitives():
    from model import Transformer
    from model.parallel.layout import apply_semi_auto

    c = cfg(recipe="tiny").model
    model = Transformer(c, 400, 400, 0)
    rows = apply_semi_auto(model, 2, 2)
    attentions = c.encoder_layers + 2 * c.decoder_layers
    ffns = c.encoder_layers + c.decoder_layers
    # per attention 4 projections (matmul + bias add) + qk, softmax, av; per FFN 2 x (matmul + bias
    # add); one embedding gather (the table is shared) and the output projection
    assert len(rows) == attentions * 11 + ffns * 4 + 1 + 1
    assert len({path for path, _, _ in rows}) == len(rows)
    attn = model.encoder[0].self_attn
    assert attn.w_q.matmul.attrs["in_strategy"] == ((2, 1), (2, 1))
    assert attn.w_o.matmul.attrs["in_strategy"] == ((2, 2), (1, 2))
    assert attn.attention.qk.attrs["in_strategy"] == ((2, 2, 1, 1), (2, 2, 1, 1))
    assert model.decoder[0].ffn.w2.matmul.attrs["in_strategy"] == ((2, 2), (1, 2))
    assert model.logits.matmul.attrs["in_strategy"] == ((2, 1), (2, 1))
    # nn.Embedding gathers flattened ids: the ids' strategy has their rank (1), the table's is (mp, 1),
    # the same split of the tied table as the output projection's
    gather = model.src_embed.gather.attrs["in_strategy"]
    assert gather == ((2, 1), (2,)) and len(gather[1]) == len(model.src_embed.shp_flat) == 1
    assert gather[0] == model.logits.matmul.attrs["in_strategy"][1]


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
    """Tied or not, the decoder states enter the vocabulary-parallel projection through exactly one
    CopyToGroup (a second would all-reduce their gradient twice), and the output weight is split by rows."""
    from model import Transformer
    from model.parallel.layers import VocabParallelLogits, VocabRows
    from model.parallel.layout import apply_hybrid
    from model.parallel.mappings import CopyToGroup

    for sets in ([], ["model.share_embeddings=false"]):
        model = Transformer(cfg(*sets, recipe="tiny").model, 400, 400, 0)
        applied = apply_hybrid(model, "mp_0", 0, 2)
        assert isinstance(model.logits, VocabParallelLogits)
        copies = [c for _, c in model.logits.cells_and_names() if isinstance(c, CopyToGroup)]
        assert len(copies) == 1
        assert model.output_weight().shape == (200, model.cfg.d_model)
        assert applied.shard_axis[model.output_weight().name] == 0
        if sets:
            assert isinstance(model.out_proj, VocabRows)


def _cells(cell):
    return [c for _, c in cell.cells_and_names()]


def _strategies(cell):
    from mindspore.ops.primitive import Primitive

    found = []
    for c in _cells(cell):
        for value in vars(c).values():
            if isinstance(value, Primitive) and "in_strategy" in value.attrs:
                found.append(value)
    return found


def test_the_seam_applies_hybrid_layers_and_no_strategies():
    from mindspore import nn

    from model import Transformer
    from model.parallel.layers import ColumnParallelDense, RowParallelDense
    from trainer.build import assemble_step
    from trainer.parallel.context import ParallelContext
    from trainer.parallel.seam import parallelize

    c = cfg("parallel.model_parallel=2")
    plan = make_plan(c, 2, "CPU")
    assert plan.mode == "hybrid"
    model = Transformer(c.model, 400, 400, 0)
    parallel = parallelize(model, ParallelContext(plan, "CPU", rank=1, mp_rank=1, mp_group="mp_0"))
    assert any(isinstance(x, ColumnParallelDense) for x in _cells(model))
    assert any(isinstance(x, RowParallelDense) for x in _cells(model))
    assert not _strategies(model)
    assert parallel.shard_axis and not parallel.full_batch and not parallel.strategies
    step = assemble_step(model, nn.SGD(model.trainable_params(), 0.1), 0.1, 1.0, parallel)
    weights = step.update_step.norm.weights
    assert set(weights) == {1.0, 0.5}  # split parameters count every shard, replicated ones once
    assert step.update_step.norm.mp_sum is not None


def test_the_seam_under_semi_auto_sets_only_strategies(monkeypatch):
    from mindspore import nn
    from mindspore.parallel import auto_parallel

    from model import Transformer
    from model.parallel.layers import ColumnParallelDense, VocabParallelEmbedding
    from model.parallel.mappings import CopyToGroup, GatherLastDim, ReduceFromGroup
    from trainer.build import assemble_step
    from trainer.parallel.context import ParallelContext
    from trainer.parallel.seam import parallelize

    c = cfg("parallel.mode=semi_auto", "parallel.model_parallel=2", "parallel.optimizer_shard=true")
    plan = make_plan(c, 8, "Ascend")
    assert plan.mode == "semi_auto" and plan.caveat and "has not run" in plan.caveat
    model = Transformer(c.model, 400, 400, 0)
    parallel = parallelize(model, ParallelContext(plan, "Ascend", rank=0))
    assert _strategies(model) and len(parallel.strategies) == len(_strategies(model))
    explicit = (ColumnParallelDense, VocabParallelEmbedding, CopyToGroup, ReduceFromGroup, GatherLastDim)
    assert not any(isinstance(x, explicit) for x in _cells(model))
    # the step goes to MindSpore 2.10's AutoParallel with the whole batch on every rank
    monkeypatch.setattr(auto_parallel, "get_rank", lambda: 0)
    monkeypatch.setattr(auto_parallel, "get_group_size", lambda: 8)
    step = assemble_step(model, nn.SGD(model.trainable_params(), 0.1), 0.1, 1.0, parallel)
    assert not any(isinstance(x, nn.DistributedGradReducer) for x in _cells(step.train_step))
    assert step.update_step.norm.mp_sum is None
    assert set(step.update_step.norm.weights) == {1.0}
    batch = (np.ones((8, 5), np.int32),)
    assert parallel.full_batch and parallel.local_rows(batch)[0].shape == (8, 5)  # every rank the whole batch
    wrapped = step.train_step
    assert isinstance(wrapped, auto_parallel.AutoParallel) and wrapped._full_batch
    assert wrapped._parallel_mode == "semi_auto" and wrapped._enable_parallel_optimizer  # optimizer_shard


def test_training_refuses_semi_auto_until_its_checkpoints_exist():
    from trainer.parallel.plan import check_trainable

    check_trainable(make_plan(cfg("parallel.model_parallel=2"), 8, "Ascend"))  # hybrid: fine
    with pytest.raises(ConfigError, match="semi_auto: mindrun's sharded checkpoints .* parallel.mode=hybrid"):
        check_trainable(make_plan(cfg("parallel.mode=semi_auto", "parallel.model_parallel=2"), 8, "Ascend"))


@pytest.mark.parametrize("sets, limit, kind, wire", [
    ([], None, "FlatReduction", "Float32"),  # auto: a model this size goes through the flat buffer
    (["parallel.grad_reduce=auto"], 0, "DataParallelReduction", None),  # past the limit: per gradient
    (["parallel.grad_reduce=per_tensor"], None, "DataParallelReduction", None),
    (["parallel.grad_reduce=flat"], 0, "FlatReduction", "Float32"),  # asked for: whatever the size
    (["parallel.grad_reduce_dtype=float16", "precision.loss_scale=static"], None, "FlatReduction", "Float16"),
])
def test_the_seam_picks_the_configured_gradient_reduction(sets, limit, kind, wire, monkeypatch):
    """parallel.grad_reduce / grad_reduce_dtype reach the update step; the flat buffer splits back exactly."""
    import mindspore as ms
    from mindspore import nn, ops

    from model import Transformer
    from trainer.build import assemble_step
    from trainer.parallel.context import ParallelContext
    from trainer.parallel.seam import parallelize

    ms.set_context(mode=ms.PYNATIVE_MODE)
    if limit is not None:
        monkeypatch.setattr("trainer.parallel.seam.FLAT_LIMIT_BYTES", limit)
    c = cfg("parallel.mode=data_parallel", "model.encoder_layers=3", "model.decoder_layers=3", *sets)
    plan = make_plan(c, 2, "CPU")
    model = Transformer(c.model, 400, 400, 0)
    parallel = parallelize(model, ParallelContext(plan, "CPU", rank=1, dp_rank=1, dp_group="dp_0"))
    reduction = assemble_step(model, nn.SGD(model.trainable_params(), 0.1), 0.1, 1.0, parallel).update_step.reduction
    assert type(reduction).__name__ == kind
    if wire is None:
        return
    assert str(reduction.wire) == wire
    if limit == 0:
        return  # the same float32 buffer as the first case, whose split-back is checked there (a compile saved)
    reduction.grad_sum = reduction.sum = ops.Identity()  # one rank's view: the sums are its own values
    weights = model.trainable_params()
    assert len(weights) > 100  # graph mode once unrolled a split of this many past its depth limit
    ms.set_context(mode=ms.GRAPH_MODE)
    grads = tuple(ms.Tensor(np.random.default_rng(i).normal(0, 1e-2, p.shape).astype(np.float32))
                  for i, p in enumerate(weights))
    back, loss_sum, nll_sum = reduction(grads, ms.Tensor(12345.5, ms.float32), ms.Tensor(7.25, ms.float32))
    assert (float(loss_sum.asnumpy()), float(nll_sum.asnumpy())) == (12345.5, 7.25)  # float32 whatever the wire
    for g, b in zip(grads, back):
        assert b.shape == g.shape and b.dtype == ms.float32
        if wire == "Float32":
            np.testing.assert_array_equal(b.asnumpy(), g.asnumpy())
        else:  # float16 rounding: half an ulp, 2**-11 relative for normals, 2**-25 absolute below them
            error = np.abs(b.asnumpy() - g.asnumpy())
            assert (error <= 2.0 ** -11 * np.abs(g.asnumpy()) + 2.0 ** -25).all() and error.max() > 0


def test_semi_auto_leaves_the_gradient_reduction_to_mindspore():
    base = ("parallel.mode=semi_auto", "parallel.model_parallel=2")
    assert make_plan(cfg(*base), 8, "Ascend").grad_reduce == "auto"  # the default: MindSpore inserts its own
    for choice in ("parallel.grad_reduce=flat", "parallel.grad_reduce=per_tensor"):
        with pytest.raises(ConfigError, match="under parallel.mode=semi_auto MindSpore inserts its own"):
            make_plan(cfg(*base, choice), 8, "Ascend")
    assert "one flat float32 buffer" in make_plan(cfg("parallel.mode=data_parallel"), 2, "CPU").describe()
    assert "flat" not in make_plan(cfg("parallel.mode=data_parallel", "parallel.grad_reduce=per_tensor"), 2,
                                   "CPU").describe()
