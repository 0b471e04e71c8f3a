"""The CPU's fused output projection + loss gives the plain loss's sums and gradients, and the
build path uses it where it may (trainer/cpu/loss.py)."""
import numpy as np
import mindspore as ms
import pytest
from mindspore import nn

from model.config import ModelConfig
from model.loss import LabelSmoothedCrossEntropy
from model.transformer import Transformer
from trainer.build import assemble_step
from trainer.cpu import CpuSpeedups
from trainer.cpu.loss import FusedProjectionLoss, WrittenOutCrossEntropy
from trainer.parallel.seam import Parallelized

RNG = np.random.default_rng(11)


@pytest.fixture(autouse=True)
def pynative():
    ms.set_context(mode=ms.PYNATIVE_MODE)


class _Objective(nn.Cell):
    """2 * loss_sum + 0.5 * nll_sum of logits = states @ weight^T, fused (skipping padding or not) or not."""

    def __init__(self, criterion, fused, skip_padding=False):
        super().__init__()
        self.criterion, self.fused = criterion, fused
        self.fused_loss = FusedProjectionLoss(None, criterion.eps, criterion.pad_id, skip_padding)
        self.matmul = ms.ops.MatMul(transpose_b=True)

    def construct(self, states, weight, target):
        if self.fused:
            loss_sum, nll_sum, _ = self.fused_loss.from_states(states, weight, target)
        else:
            b, length, d = states.shape
            logits = self.matmul(states.reshape(b * length, d), weight).reshape(b, length, -1)
            loss_sum, nll_sum, _ = self.criterion(logits, target)
        return 2.0 * loss_sum + 0.5 * nll_sum


def numpy_objective_and_grads(states, weight, target, eps, pad):
    logits = states @ weight.T
    shifted = logits - logits.max(-1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    keep = (target != pad)[..., None]
    vocab = weight.shape[0]
    onehot = np.eye(vocab)[target]
    nll = -(log_p * onehot).sum(-1, keepdims=True)
    loss = (1 - eps) * nll - eps * log_p.mean(-1, keepdims=True)
    value = (keep * (2.0 * loss + 0.5 * nll)).sum()
    p = np.exp(log_p)
    d_logits = keep * (2.0 * (p - (1 - eps) * onehot - eps / vocab) + 0.5 * (p - onehot))
    d_states = d_logits @ weight
    d_weight = d_logits.reshape(-1, vocab).T @ states.reshape(-1, states.shape[-1])
    return value, d_states, d_weight


@pytest.mark.parametrize("eps, scale", [(0.1, 1.0), (0.0, 1.0), (0.2, 40.0)])
def test_from_states_matches_numpy_and_the_unfused_loss(eps, scale):
    # scale 40 makes logits in the hundreds: unshifted exp() would overflow
    states = (RNG.standard_normal((3, 5, 8)) * scale).astype(np.float32)
    weight = RNG.standard_normal((13, 8)).astype(np.float32)
    target = np.array([[2, 5, 12, 0, 0], [3, 3, 9, 1, 0], [7, 0, 0, 0, 0]], np.int32)  # 0 is padding
    want = numpy_objective_and_grads(states.astype(np.float64), weight.astype(np.float64), target, eps, 0)
    inputs = (ms.Tensor(states), ms.Tensor(weight), ms.Tensor(target))
    sums = [x.asnumpy() for x in FusedProjectionLoss(None, eps, 0, False).from_states(*inputs)]
    np.testing.assert_allclose([x.asnumpy() for x in FusedProjectionLoss(None, eps, 0, True).from_states(*inputs)],
                               sums, rtol=1e-5)
    for unfused_loss in (LabelSmoothedCrossEntropy(eps, 0), WrittenOutCrossEntropy(eps, 0)):
        unfused = [x.asnumpy() for x in unfused_loss(ms.Tensor(states @ weight.T), ms.Tensor(target))]
        np.testing.assert_allclose(sums, unfused, rtol=1e-4)
    assert sums[2] == 8  # padding never counts
    for criterion, fused, skip_padding in ((LabelSmoothedCrossEntropy(eps, 0), True, False),
                                           (LabelSmoothedCrossEntropy(eps, 0), True, True),
                                           (LabelSmoothedCrossEntropy(eps, 0), False, False),
                                           (WrittenOutCrossEntropy(eps, 0), False, False)):
        objective = _Objective(criterion, fused, skip_padding)
        value, (d_states, d_weight) = ms.value_and_grad(objective, grad_position=(0, 1))(*inputs)
        np.testing.assert_allclose(value.asnumpy(), want[0], rtol=1e-4)
        np.testing.assert_allclose(d_states.asnumpy(), want[1], rtol=1e-4, atol=1e-4 * scale)
        np.testing.assert_allclose(d_weight.asnumpy(), want[2], rtol=1e-4, atol=1e-4 * scale)


def _step(model, fused, parallel=Parallelized("standalone")):
    # SGD: the update is the (clipped) gradient itself; Adam would blow up rounding noise in
    # gradients that are zero in exact arithmetic (a self-attention key bias) to +-lr
    optimizer = nn.SGD(model.trainable_params(), learning_rate=0.5)
    return assemble_step(model, optimizer, 0.1, 1.0, parallel, CpuSpeedups(backward=False, fused_loss=fused))


@pytest.mark.parametrize("share", [False, True])
def test_train_step_fused_and_unfused_make_the_same_update(share):
    cfg = ModelConfig(d_model=16, n_heads=2, d_ff=32, encoder_layers=1, decoder_layers=1, dropout=0.0,
                      attention_dropout=0.0, activation_dropout=0.0, share_embeddings=share)
    vocab_src, vocab_tgt = (23, 23) if share else (23, 19)
    src = ms.Tensor(RNG.integers(1, vocab_src, (4, 6)), ms.int32)
    tgt = RNG.integers(1, vocab_tgt, (4, 6))
    tgt[1, 3:] = 0
    tgt_in, tgt_out = ms.Tensor(tgt[:, :-1], ms.int32), ms.Tensor(tgt[:, 1:], ms.int32)
    results = []
    for fused in (True, False):
        ms.set_seed(3)
        model = Transformer(cfg, vocab_src, vocab_tgt, 0)
        step = _step(model, fused)
        loss_fn = step.grad_step.loss_fn
        assert isinstance(loss_fn if fused else loss_fn.criterion, FusedProjectionLoss if fused else WrittenOutCrossEntropy)
        assert not fused or loss_fn.skip_padding  # on the CPU the fused loss drops padded targets
        r = step(src, tgt_in, tgt_out)
        outputs = [r.loss_sum, r.nll_sum, r.n_tokens, r.grad_norm]
        results.append((outputs, {p.name: p.asnumpy() for p in model.trainable_params()}))
    (fused_out, fused_params), (plain_out, plain_params) = results
    np.testing.assert_allclose(fused_out, plain_out, rtol=1e-5)  # loss, nll, tokens, gradient norm
    assert fused_params.keys() == plain_params.keys()
    for name, value in plain_params.items():
        np.testing.assert_allclose(fused_params[name], value, rtol=1e-4, atol=1e-6, err_msg=name)


def test_train_step_keeps_logits_where_a_layout_splits_the_projection():
    cfg = ModelConfig(d_model=16, n_heads=2, d_ff=32, encoder_layers=1, decoder_layers=1, share_embeddings=False)
    model = Transformer(cfg, 11, 11, 0)
    assert isinstance(_step(model, fused=True).grad_step.loss_fn, FusedProjectionLoss)
    hybrid = Parallelized("hybrid", shard_axis={"out_proj.weight": 0})  # what the hybrid layout reports
    assert hybrid.splits_projection
    assert isinstance(_step(model, True, hybrid).grad_step.loss_fn.criterion, WrittenOutCrossEntropy)
    assert isinstance(_step(model, True, Parallelized("semi_auto")).grad_step.loss_fn.criterion,
                      WrittenOutCrossEntropy)
    plain = assemble_step(model, nn.SGD(model.trainable_params(), 0.5), 0.1, 1.0)  # off the CPU: no speed-ups
    assert type(plain.grad_step.loss_fn.criterion) is LabelSmoothedCrossEntropy


def test_skipping_padding_survives_a_batch_of_padding_only():
    criterion = LabelSmoothedCrossEntropy(0.1, 0)
    states = ms.Tensor(RNG.standard_normal((2, 3, 4)).astype(np.float32))
    weight = ms.Tensor(RNG.standard_normal((5, 4)).astype(np.float32))
    target = ms.Tensor(np.zeros((2, 3), np.int32))
    value, (d_states, d_weight) = ms.value_and_grad(_Objective(criterion, True, True), grad_position=(0, 1))(
        states, weight, target)
    assert value.asnumpy() == 0.0
    assert not d_states.asnumpy().any() and not d_weight.asnumpy().any()
