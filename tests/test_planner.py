"""The planner's sizes (issue 18): parameter counts equal the built models' for every recipe, at full size
without allocating; a layout that cannot fit is an error naming the shortfall; decoder-only recipes build
and take a step at tiny scale; a decoder-only row spans both sides of a pair."""
import json
from pathlib import Path

import numpy as np
import mindspore as ms
import pytest
from mindspore import nn, ops
from mindspore.nn.utils import no_init_parameters

from model import Transformer
from model.decoder_only import DecoderOnly
from model.size import parameter_count, replicated_parameters
from trainer.cli import main
from trainer.config import load_config
from trainer.parallel.plan import make_plan
from trainer.parallel.sizing import (CPU, GIB, flops_per_token, memory, memory_model, rows_per_device,
                                     sequence_length, side_length)

RECIPES = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "trainer" / "recipes").glob("*.yaml"))
SHRINK = ["model.d_model=32", "model.n_heads=8", "model.d_ff=64", "model.decoder_layers=2", "model.encoder_layers=1",
          "data.vocab_size=128"]


def built(cfg, vocab):
    if cfg.model.arch == "decoder_only":
        return DecoderOnly(cfg.model, vocab, 0)
    return Transformer(cfg.model, vocab, vocab, 0)


def declared(model):
    return sum(int(np.prod(p.shape)) for p in model.trainable_params())


@pytest.mark.parametrize("recipe", RECIPES)
def test_parameter_counts_equal_the_built_models_at_full_size_and_tiny(recipe):
    full = load_config(recipe)
    vocab = full.data.vocab_size
    with no_init_parameters():  # shapes only: llama2_7b's 27 GB of float32 are never allocated
        assert parameter_count(full.model, vocab, vocab) == declared(built(full, vocab))
    tiny = load_config(recipe, SHRINK)
    assert parameter_count(tiny.model, 128, 128) == declared(built(tiny, 128))


def test_replicated_parameters_are_what_the_hybrid_layout_leaves_whole():
    from model.parallel.layout import split_axes

    for recipe in ("small", "gpt_125m", "llama2_7b"):
        cfg = load_config(recipe, SHRINK)
        model = built(cfg, 128)
        axes = split_axes(model)
        whole = sum(int(np.prod(p.shape)) for p in model.trainable_params() if p.name not in axes)
        assert whole == replicated_parameters(cfg.model), recipe


@pytest.mark.parametrize("recipe", ["gpt_125m", "gpt_1b3", "llama2_7b", "llama_tiny"])
def test_decoder_only_recipes_build_and_take_a_step_at_tiny_scale(recipe):
    ms.set_context(mode=ms.PYNATIVE_MODE)
    cfg = load_config(recipe, SHRINK)
    model = DecoderOnly(cfg.model, 64, 0)
    optimizer = nn.Adam(model.trainable_params(), learning_rate=1e-2)
    tokens = ms.Tensor(np.random.default_rng(0).integers(4, 64, (2, 16)).astype(np.int32))

    def loss_fn(x):
        logits = model.lm_logits(x[:, :-1])
        return ops.cross_entropy(logits.reshape(-1, 64), x[:, 1:].reshape(-1))

    grad_fn = ms.value_and_grad(loss_fn, None, optimizer.parameters)
    first, grads = grad_fn(tokens)
    optimizer(grads)
    assert float(loss_fn(tokens).asnumpy()) < float(first.asnumpy())


def test_a_decoder_only_sequence_spans_both_sides_of_a_pair():
    """Its attention spans source + target (2 x the packed side), rows are counted per side, and the output
    layer runs at target positions only: FLOPs per token against the encoder-decoder's at one width."""
    cfg = load_config("gpt_125m")
    assert (side_length(cfg), sequence_length(cfg), rows_per_device(cfg, 8)) == (1024, 2048, 4)
    d, v = cfg.model.d_model, 32000
    stack = cfg.model.decoder_layers * (8 * d * d + 4 * d * cfg.model.d_ff + 4 * 2048 * d)
    assert flops_per_token(cfg.model, v, 2048) == 3.0 * (stack + d * v)
    make_plan(cfg, 8, "Ascend", for_execution=False)  # loads and plans: a trainable recipe now


def test_memory_scales_with_the_layout():
    cfg = load_config("llama2_7b")
    one, eight = memory(cfg, 32000, dp=1, mp=8), memory(cfg, 32000, dp=8, mp=1)
    assert eight.weights / one.weights == pytest.approx(8, rel=0.01)  # all but the RMSNorm scales split
    assert 25 * GIB < eight.weights < 25.2 * GIB  # 6,738,415,616 float32 parameters
    assert eight.optimizer_sharded == pytest.approx(eight.optimizer / 8)
    assert one.activations_recompute < one.activations


def test_a_layout_that_cannot_fit_is_an_error_naming_the_shortfall(capsys):
    code = main(["plan", "--config", "llama2_7b", "--cluster", "cluster_configs/ascend_1x8.yaml",
                 "--set", "parallel.model_parallel=1", "--set", "data.max_tokens=16384"])
    out, err = capsys.readouterr()
    assert code == 2
    (line,) = err.strip().splitlines()
    assert line.startswith("mindrun plan: error: dp 8 x mp 1 of llama2_7b needs ") and "short by" in line
    assert "it fits with" not in line  # not even with the levers
    assert "does NOT fit" in out


def test_the_recipes_layout_fits_and_the_layouts_are_ranked(capsys):
    assert main(["plan", "--config", "llama2_7b", "--cluster", "cluster_configs/ascend_1x8.yaml"]) == 0
    out = capsys.readouterr().out
    assert "6,738,415,616 parameters" in out and ": fits" in out  # Llama-2-7B's published count
    table = out.split("est. step  note\n")[1].splitlines()
    rows = [line for line in table if line.strip() and line.split()[0].isdigit()]
    assert {tuple(r.split()[:2]) for r in rows} == {("1", "8"), ("2", "4"), ("4", "2"), ("8", "1")}
    fitting = [r for r in rows if "does not fit" not in r]
    times = [float(r.split()[4]) for r in fitting]
    assert len(fitting) == 3 and times == sorted(times) and rows[:3] == fitting  # ranked by step time
    assert rows[0].endswith("<- fastest") and sum("<- " in r for r in rows) == 2
    mine = next(r for r in rows if r.split()[:2] == ["1", "8"])  # the recipe's layout, marked
    assert mine.endswith("this config") or mine.endswith("this config, fastest")
    assert "fits with optimizer sharding" in next(r for r in rows if r.split()[:2] == ["4", "2"])
    assert "even with optimizer sharding and full recompute" in rows[-1] and rows[-1].split()[:2] == ["8", "1"]
    first = rows[0].split()
    assert f"select the fastest: --set parallel.data_parallel={first[0]} --set parallel.model_parallel={first[1]}" \
        in out


def test_a_layout_that_fits_only_with_the_levers_names_the_settings(capsys):
    sets = ["--set", "parallel.model_parallel=2", "--set", "data.max_tokens=16384"]
    assert main(["plan", "--config", "llama2_7b", "--cluster", "cluster_configs/ascend_1x8.yaml", *sets]) == 2
    err = capsys.readouterr().err
    assert "it fits with --set parallel.optimizer_shard=true --set model.recompute=selective" in err
    assert main(["plan", "--config", "llama2_7b", "--cluster", "cluster_configs/ascend_1x8.yaml", *sets,
                 "--set", "parallel.optimizer_shard=true", "--set", "model.recompute=selective"]) == 0
    out = capsys.readouterr().out
    assert ": fits" in out and "with this config's levers (optimizer_shard true, recompute selective)" in out


def test_the_cpu_memory_model_scales_the_formula_and_its_levers_free_nothing():
    cfg = load_config("small")
    mem = memory(cfg, 8000, dp=2, mp=1)
    state, activations = mem.parts()
    assert state + activations == pytest.approx(mem.total())  # the parts are the formula's total
    assert 0 < mem.logits < activations
    assert mem.parts(optimizer_shard=True)[0] == pytest.approx(state - mem.optimizer / 2)
    assert mem.parts(recompute="full")[1] < activations
    held = CPU.fixed + CPU.state * state + CPU.activations * activations
    params = mem.weights / 4
    o2 = memory(load_config("small", ["precision.level=O2"]), 8000, dp=2, mp=1)
    assert o2.mixed and not mem.mixed
    assert o2.total(model=CPU) == pytest.approx(CPU.fixed + CPU.state * o2.parts()[0]
                                                + CPU.mixed_activations * o2.parts()[1])
    assert mem.total(model=CPU) == pytest.approx(held)
    # the levers free nothing on the CPU: each adds what the runs measured per parameter
    assert mem.total(False, "full", CPU) == pytest.approx(held + CPU.recompute_extra * params)
    assert mem.total(True, "none", CPU) == pytest.approx(held + CPU.shard_extra * params)
    assert CPU.state > 1 and CPU.activations > 1 and CPU.fixed > 0  # the CPU holds more than the formula counts
    assert mem.total(model=memory_model("Ascend")) == pytest.approx(mem.total())  # the formula as written
    assert memory_model("cpu") is CPU and memory_model("GPU").is_formula


def test_the_cpu_memory_model_is_within_a_quarter_of_the_runs_it_was_fitted_on():
    """bench/results/planner-*-fit.json: the measured runs (5 models x the levers at dp 2, O0 and O2) against
    sizing.CPU, so a change of the formula or of the factors that no longer matches what was measured fails here."""
    from bench.planner import FACTORS, model_estimate, with_estimates

    result = sorted((Path(__file__).resolve().parents[1] / "bench" / "results").glob("planner-*-fit.json"))[-1]
    rows = json.loads(result.read_text())["rows"]
    assert len({r["case"] for r in rows}) >= 7 and len(rows) >= 23
    for row in map(with_estimates, rows):
        estimate = model_estimate(row, **{name: getattr(CPU, name) for name in FACTORS})
        assert abs(estimate / row["measured"] - 1) <= 0.25, (row["case"], row["settings"], estimate, row["measured"])


def test_plan_names_the_backends_memory_model_and_offers_no_levers_on_the_cpu(capsys):
    sets = ["--set", "data.max_tokens=8192"]
    assert main(["plan", "--config", "small", "--cluster", "cluster_configs/local_cpu_2.yaml", *sets]) == 0
    out = capsys.readouterr().out
    assert "memory model: cpu, calibrated (" in out and "free no memory there" in out
    assert "(cpu: a device is this host's memory over its 2 workers, " in out
    mem = memory(load_config("small", ["data.max_tokens=8192"]), 8000, dp=2, mp=1)
    held = next(line for line in out.splitlines() if line.startswith("  as cpu holds it"))
    assert f"{mem.total(model=CPU) / GIB:,.2f} GiB" in held
    table = out.split("est. step  note\n")[1]
    assert "optimizer sharding" not in table and "recompute" not in table
    assert main(["plan", "--config", "small", "--cluster", "cluster_configs/local_cpu_2.yaml", *sets,
                 "--set", "model.d_model=4096", "--set", "model.d_ff=16384"]) == 2
    out, err = capsys.readouterr()
    assert "(the levers free no memory on cpu)" in out and "it fits with" not in err
    assert main(["plan", "--config", "small", "--cluster", "cluster_configs/ascend_1x8.yaml"]) == 0
    assert "memory model: ascend, the formula as written (factors 1.0; not yet measured on an NPU)" in \
        capsys.readouterr().out
