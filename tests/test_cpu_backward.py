"""The CPU speed-ups (trainer/cpu) give autodiff's gradients, and the build path applies them on the CPU only."""
from pathlib import Path

import numpy as np
import mindspore as ms
import pytest
from mindspore import nn

from model.config import ModelConfig
from model.loss import LabelSmoothedCrossEntropy
from model.transformer import Transformer
from trainer.build import assemble_step, build_model
from trainer.config import load_config
from trainer.cpu import CpuSpeedups
from trainer.cpu import kernels as cpu_kernels
from trainer.cpu.backward import BiasAdd, LayerNorm, Softmax, use_cpu_backward
from trainer.cpu.grad_norm import CompiledSumOfSquares
from trainer.parallel.seam import Parallelized

RNG = np.random.default_rng(7)


class _Weighted(nn.Cell):
    """sum(cell(*inputs) * dy): its gradient is the cell's backward applied to dy (in either execution mode)."""

    def __init__(self, cell, dy):
        super().__init__()
        self.cell, self.dy = cell, ms.Tensor(dy)

    def construct(self, *inputs):
        return (self.cell(*inputs) * self.dy).sum()


def numpy_layer_norm_grads(x, gamma, dy, eps):
    mean = x.mean(-1, keepdims=True)
    rstd = 1.0 / np.sqrt(x.var(-1, keepdims=True) + eps)
    xhat = (x - mean) * rstd
    g = dy * gamma
    dx = rstd * (g - g.mean(-1, keepdims=True) - xhat * (g * xhat).mean(-1, keepdims=True))
    axes = tuple(range(x.ndim - 1))
    return dx, (dy * xhat).sum(axes), dy.sum(axes)


@pytest.fixture(scope="module")
def layer_norm_library(tmp_path_factory):
    """trainer/cpu/kernels' LayerNorm, compiled into a scratch directory (a compiler is part of the test machine)."""
    assert cpu_kernels.compiler(), "no C++ compiler: install g++ (the CPU kernels are tested, not skipped)"
    library = cpu_kernels.library("layer_norm", str(tmp_path_factory.mktemp("kernels")))
    assert library and Path(library).is_file()
    return library


@pytest.mark.parametrize("shape, in_cpp", [((6, 16), False), ((3, 5, 16), False), ((6, 16), True),
                                           ((3, 5, 37), True)])
def test_layer_norm_matches_numpy_and_nn_layer_norm(shape, in_cpp, request):
    x = RNG.standard_normal(shape).astype(np.float32) * 3 + 1
    dy = RNG.standard_normal(shape).astype(np.float32)
    reference = nn.LayerNorm((shape[-1],), epsilon=1e-5)
    reference.gamma.set_data(ms.Tensor(RNG.uniform(0.5, 1.5, shape[-1]).astype(np.float32)))
    reference.beta.set_data(ms.Tensor(RNG.standard_normal(shape[-1]).astype(np.float32)))
    written = LayerNorm(reference, request.getfixturevalue("layer_norm_library") if in_cpp else None)
    assert written.in_cpp is in_cpp
    for norm in (reference, written):
        grad = ms.grad(_Weighted(norm, dy), grad_position=0, weights=norm.trainable_params())
        dx, (dgamma, dbeta) = grad(ms.Tensor(x))
        np.testing.assert_allclose(norm(ms.Tensor(x)).asnumpy(), reference(ms.Tensor(x)).asnumpy(), atol=1e-6)
        want = numpy_layer_norm_grads(x, reference.gamma.asnumpy(), dy, 1e-5)
        for got, expected in zip((dx, dgamma, dbeta), want):
            np.testing.assert_allclose(got.asnumpy(), expected, rtol=1e-4, atol=1e-5)


def test_bias_add_gradient_is_the_column_sum():
    x = ms.Tensor(RNG.standard_normal((7, 5)).astype(np.float32))
    b = ms.Tensor(RNG.standard_normal(5).astype(np.float32))
    dy = RNG.standard_normal((7, 5)).astype(np.float32)
    dx, db = ms.grad(_Weighted(BiasAdd(), dy), grad_position=(0, 1))(x, b)
    np.testing.assert_allclose(dx.asnumpy(), dy, atol=1e-6)
    np.testing.assert_allclose(db.asnumpy(), dy.sum(0), rtol=1e-5, atol=1e-5)


class _LossOf(nn.Cell):
    def __init__(self, model, criterion):
        super().__init__()
        self.model, self.criterion = model, criterion

    def construct(self, src, tgt_in, tgt_out):
        return self.criterion(self.model(src, tgt_in), tgt_out)[0]


def _copy_weights(source: nn.Cell, target: nn.Cell) -> None:
    values = {p.name: p.asnumpy() for p in source.get_parameters()}
    for p in target.get_parameters():
        p.set_data(ms.Tensor(values[p.name]))


@pytest.mark.parametrize("pre_norm, jit, in_cpp", [(False, False, False), (True, False, False), (False, True, False),
                                                   (False, True, True), (True, False, True)])
def test_transformer_gradients_equal_autodiff_after_the_swap(pre_norm, jit, in_cpp, tmp_path):
    cfg = ModelConfig(d_model=32, n_heads=4, d_ff=64, encoder_layers=2, decoder_layers=2, dropout=0.0,
                      attention_dropout=0.0, activation_dropout=0.0, pre_norm=pre_norm, share_embeddings=False)
    plain, swapped = Transformer(cfg, 40, 30, 0), Transformer(cfg, 40, 30, 0)
    names = [p.name for p in swapped.get_parameters()]
    norms = sum(isinstance(c, nn.LayerNorm) for _, c in swapped.cells_and_names())
    biased = sum(isinstance(c, nn.Dense) and c.has_bias for _, c in swapped.cells_and_names())
    assert use_cpu_backward(swapped, tmp_path if in_cpp else None) == norms + biased + (6 if in_cpp else 0) > 0
    assert all(c.in_cpp is in_cpp for _, c in swapped.cells_and_names() if isinstance(c, LayerNorm))
    assert sum(isinstance(c, Softmax) for _, c in swapped.cells_and_names()) == (6 if in_cpp else 0)  # attentions
    assert [p.name for p in swapped.get_parameters()] == names  # checkpoints keep their names
    assert not any(type(c) is nn.LayerNorm for _, c in swapped.cells_and_names())
    _copy_weights(plain, swapped)
    src = ms.Tensor(RNG.integers(1, 40, (3, 7)), ms.int32)
    tgt = RNG.integers(1, 30, (3, 6))
    tgt[0, 4:] = 0  # some padding
    tgt_in, tgt_out = ms.Tensor(tgt[:, :-1], ms.int32), ms.Tensor(tgt[:, 1:], ms.int32)
    criterion = LabelSmoothedCrossEntropy(0.1, 0)
    results = []
    for model in (plain, swapped):
        model.set_train(True)
        fn = ms.value_and_grad(_LossOf(model, criterion), None, model.trainable_params())
        loss, grads = (ms.jit(fn) if jit else fn)(src, tgt_in, tgt_out)
        results.append((loss.asnumpy(), {p.name: g.asnumpy() for p, g in zip(model.trainable_params(), grads)}))
    np.testing.assert_allclose(results[1][0], results[0][0], rtol=1e-6)
    assert results[0][1].keys() == results[1][1].keys()
    for name, expected in results[0][1].items():
        np.testing.assert_allclose(results[1][1][name], expected, rtol=1e-3, atol=1e-5, err_msg=name)


def test_build_model_swaps_on_the_cpu_unless_switched_off(tmp_path):
    cells = [c for _, c in build_model(load_config("tiny", [f"data.cache_dir={tmp_path}"]), 50, 50,
                                       "CPU").cells_and_names()]
    assert any(isinstance(c, LayerNorm) for c in cells)
    assert all(c.in_cpp for c in cells if isinstance(c, LayerNorm))
    assert len(list((tmp_path / "kernels").glob("layer_norm-*.so"))) == 1  # compiled into the cache
    no_cpp = build_model(load_config("tiny", [f"data.cache_dir={tmp_path}", "train.cpu_kernels=false"]), 50, 50,
                         "CPU")
    assert not any(c.in_cpp for _, c in no_cpp.cells_and_names() if isinstance(c, LayerNorm))
    assert not any(type(c) is nn.LayerNorm for c in cells)
    assert all(isinstance(c.bias_add, BiasAdd) for c in cells if isinstance(c, nn.Dense) and c.has_bias)
    plain = [c for _, c in build_model(load_config("tiny", ["train.cpu_backward=false"]), 50, 50,
                                       "CPU").cells_and_names()]
    assert not any(isinstance(c, (LayerNorm, BiasAdd)) for c in plain)
    assert any(type(c) is nn.LayerNorm for c in plain)
    on_ascend = [c for _, c in build_model(load_config("tiny"), 50, 50, "Ascend").cells_and_names()]
    assert not any(isinstance(c, (LayerNorm, BiasAdd, Softmax)) for c in on_ascend)  # never off the CPU


def test_kernel_library_is_cached_and_falls_back_without_a_compiler(tmp_path, monkeypatch):
    first = cpu_kernels.library("layer_norm", str(tmp_path / "a"))
    cpu_kernels.library.cache_clear()  # a new process: the file on disk is reused, not rebuilt
    stamp = Path(first).stat().st_mtime_ns
    assert cpu_kernels.library("layer_norm", str(tmp_path / "a")) == first
    assert Path(first).stat().st_mtime_ns == stamp
    assert not list((tmp_path / "a").glob(".*.tmp-*"))  # no partial files left behind
    monkeypatch.setenv("CXX", "false")  # a "compiler" that always fails
    with pytest.warns(RuntimeWarning, match="falling back to MindSpore ops"):
        assert cpu_kernels.library("layer_norm", str(tmp_path / "b")) is None
    assert not list((tmp_path / "b").iterdir())
    norm = LayerNorm(nn.LayerNorm((8,)), None)  # the fallback still computes
    x = RNG.standard_normal((2, 8)).astype(np.float32)
    np.testing.assert_allclose(norm(ms.Tensor(x)).asnumpy(), (x - x.mean(-1, keepdims=True))
                               / np.sqrt(x.var(-1, keepdims=True) + 1e-7), atol=1e-4)


def test_softmax_backward_kernel_matches_numpy(tmp_path):
    library = cpu_kernels.library("softmax", str(tmp_path))
    assert library, "the softmax kernel must compile here"
    x = RNG.standard_normal((2, 3, 5, 37)).astype(np.float32) * 4
    dy = RNG.standard_normal(x.shape).astype(np.float32)
    softmax = Softmax(library)
    got = ms.grad(_Weighted(softmax, dy), grad_position=0)(ms.Tensor(x)).asnumpy()
    e = np.exp(x - x.max(-1, keepdims=True))
    y = e / e.sum(-1, keepdims=True)
    np.testing.assert_allclose(softmax(ms.Tensor(x)).asnumpy(), y, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got, y * (dy - (y * dy).sum(-1, keepdims=True)), rtol=1e-4, atol=1e-6)


def test_gradient_norm_kernel_matches_numpy_and_the_plain_step(tmp_path):
    tensors = [RNG.standard_normal(shape).astype(np.float32) for shape in [(70001,), (3, 5), (300, 257), (1,)]]
    library = cpu_kernels.library("grad_norm", str(tmp_path))
    got = CompiledSumOfSquares(library)(tuple(ms.Tensor(t) for t in tensors)).asnumpy()
    np.testing.assert_allclose(got, sum(float((t.astype(np.float64) ** 2).sum()) for t in tensors), rtol=1e-5)

    cfg = ModelConfig(d_model=16, n_heads=2, d_ff=32, encoder_layers=1, decoder_layers=1, dropout=0.0,
                      attention_dropout=0.0, activation_dropout=0.0, share_embeddings=False)
    src = ms.Tensor(RNG.integers(1, 20, (3, 5)), ms.int32)
    tgt = ms.Tensor(RNG.integers(1, 20, (3, 6)), ms.int32)
    results = []
    for kernels in (str(tmp_path), None):
        ms.set_seed(5)
        model = Transformer(cfg, 20, 20, 0)
        step = assemble_step(model, nn.SGD(model.trainable_params(), 0.5), 0.1, 0.5,  # clipped: the norm
                             speedups=CpuSpeedups(backward=False, kernel_dir=kernels))  # scales the update
        assert (step.update_step.norm.sum_of_squares is not None) is (kernels is not None)
        norm = step(src, tgt[:, :-1], tgt[:, 1:]).grad_norm
        results.append((norm, [p.asnumpy() for p in model.trainable_params()]))
    assert results[0][0] > 0.5
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-5)
    for a, b in zip(results[0][1], results[1][1]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    model = Transformer(cfg, 20, 20, 0)
    hybrid = Parallelized("hybrid", shard_axis={"encoder.0.ffn.w1.weight": 0}, mp_size=2)
    split = assemble_step(model, nn.SGD(model.trainable_params(), 0.5), 0.1, 1.0, hybrid,
                          CpuSpeedups(backward=False, kernel_dir=str(tmp_path)))
    assert split.update_step.norm.sum_of_squares is None  # split gradients weigh differently: MindSpore ops
