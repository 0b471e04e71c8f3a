"""Attention, masks, positional encoding and label smoothing against NumPy references."""
import math

import numpy as np
import mindspore as ms
import pytest

from model.attention import MultiHeadAttention, ScaledDotProductAttention
from model.loss import LabelSmoothedCrossEntropy
from model.masks import causal_mask, mask_to_bias, padding_mask
from model.positional import PositionalEncoding, sinusoid_table

RNG = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def pynative():
    ms.set_context(mode=ms.PYNATIVE_MODE)


def softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def np_attention(q, k, v, mask):
    scores = q @ k.swapaxes(-1, -2) / math.sqrt(q.shape[-1])
    scores = np.where(mask, scores, -1e9)
    return softmax(scores) @ v


def test_scaled_dot_product_attention_matches_numpy():
    q, k, v = (RNG.normal(size=(2, 3, 5, 8)).astype(np.float32) for _ in range(3))
    mask = np.ones((2, 1, 1, 5), bool)
    mask[1, ..., 3:] = False  # second sequence: last two keys are padding
    attn = ScaledDotProductAttention(8, dropout=0.0)
    out = attn(ms.Tensor(q), ms.Tensor(k), ms.Tensor(v), mask_to_bias(ms.Tensor(mask))).asnumpy()
    np.testing.assert_allclose(out, np_attention(q, k, v, mask), rtol=1e-5, atol=1e-5)
    # masked keys get no weight: changing their values changes nothing
    v2 = v.copy()
    v2[1, :, 3:] = 100.0
    out2 = attn(ms.Tensor(q), ms.Tensor(k), ms.Tensor(v2), mask_to_bias(ms.Tensor(mask))).asnumpy()
    np.testing.assert_allclose(out2[1], out[1], rtol=1e-5, atol=1e-5)


def test_multi_head_attention_matches_numpy():
    d, h = 16, 4
    mha = MultiHeadAttention(d, h, dropout=0.0)
    mha.set_train(False)
    x = RNG.normal(size=(2, 6, d)).astype(np.float32)
    mem = RNG.normal(size=(2, 4, d)).astype(np.float32)
    mask = np.ones((2, 1, 1, 4), bool)
    mask[0, ..., 2:] = False
    out = mha(ms.Tensor(x), ms.Tensor(mem), mask_to_bias(ms.Tensor(mask))).asnumpy()

    def dense(layer, inp):  # MindSpore Dense: y = x W^T + b
        return inp @ layer.weight.asnumpy().T + layer.bias.asnumpy()

    def heads(t):
        b, n, _ = t.shape
        return t.reshape(b, n, h, d // h).transpose(0, 2, 1, 3)

    q, k, v = heads(dense(mha.w_q, x)), heads(dense(mha.w_k, mem)), heads(dense(mha.w_v, mem))
    ctx = np_attention(q, k, v, mask).transpose(0, 2, 1, 3).reshape(2, 6, d)
    np.testing.assert_allclose(out, dense(mha.w_o, ctx), rtol=1e-4, atol=1e-5)


def test_padding_mask_marks_pad_positions():
    ids = ms.Tensor(np.array([[5, 6, 0, 0], [7, 0, 0, 0]], np.int32))
    mask = padding_mask(ids, 0).asnumpy()
    assert mask.shape == (2, 1, 1, 4)
    np.testing.assert_array_equal(mask[:, 0, 0], [[True, True, False, False], [True, False, False, False]])


def test_causal_mask_is_lower_triangular():
    mask = causal_mask(4).asnumpy()
    assert mask.shape == (1, 1, 4, 4)
    np.testing.assert_array_equal(mask[0, 0], np.tril(np.ones((4, 4), bool)))


def test_mask_to_bias_values():
    bias = mask_to_bias(ms.Tensor(np.array([True, False]))).asnumpy()
    assert bias[0] == 0.0 and bias[1] <= -1e4
    assert np.isfinite(bias.astype(np.float16)).all()  # mixed precision casts it to float16


def test_positional_encoding_values():
    table = sinusoid_table(50, 8)
    np.testing.assert_allclose(table[0], [0, 1, 0, 1, 0, 1, 0, 1], atol=1e-7)
    for pos in (1, 7, 49):
        for i in range(4):
            angle = pos / 10000 ** (2 * i / 8)
            assert table[pos, 2 * i] == pytest.approx(math.sin(angle), abs=1e-6)
            assert table[pos, 2 * i + 1] == pytest.approx(math.cos(angle), abs=1e-6)
    pe = PositionalEncoding(8, 50, dropout=0.0)
    x = np.zeros((2, 5, 8), np.float32)
    np.testing.assert_allclose(pe(ms.Tensor(x)).asnumpy()[1], table[:5], atol=1e-6)


def np_label_smoothed(logits, target, eps, pad):
    lp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    keep = target != pad
    nll = -np.take_along_axis(lp, target[..., None], -1)[..., 0]
    smooth = -lp.mean(-1)
    loss = (1 - eps) * nll + eps * smooth
    return (loss * keep).sum(), (nll * keep).sum(), keep.sum()


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_label_smoothed_cross_entropy_matches_numpy(eps):
    logits = RNG.normal(size=(3, 4, 11)).astype(np.float32)
    target = np.array([[2, 5, 0, 0], [3, 4, 9, 0], [1, 0, 0, 0]], np.int32)
    got = [x.asnumpy() for x in LabelSmoothedCrossEntropy(eps, 0)(ms.Tensor(logits), ms.Tensor(target))]
    want = np_label_smoothed(logits, target, eps, 0)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert got[2] == 6  # padding never counts


def test_label_smoothing_ignores_padding_logits():
    logits = RNG.normal(size=(1, 3, 7)).astype(np.float32)
    target = np.array([[4, 0, 0]], np.int32)
    crit = LabelSmoothedCrossEntropy(0.1, 0)
    a = crit(ms.Tensor(logits), ms.Tensor(target))[0].asnumpy()
    logits[0, 1:] = 50.0
    b = crit(ms.Tensor(logits), ms.Tensor(target))[0].asnumpy()
    assert a == pytest.approx(b)


def test_label_smoothing_rejects_bad_eps():
    with pytest.raises(ValueError, match="label smoothing"):
        LabelSmoothedCrossEntropy(1.0, 0)


def test_label_smoothed_gradient_matches_numpy_and_survives_large_logits():
    eps, vocab = 0.1, 11
    logits = (RNG.normal(size=(2, 3, vocab)) * 300).astype(np.float32)  # exp() would overflow unshifted
    target = np.array([[2, 5, 0], [3, 0, 0]], np.int32)
    crit = LabelSmoothedCrossEntropy(eps, 0)
    grad = ms.grad(lambda x: crit(x, ms.Tensor(target))[0])(ms.Tensor(logits)).asnumpy()
    shifted = logits - logits.max(-1, keepdims=True)
    softmax = np.exp(shifted) / np.exp(shifted).sum(-1, keepdims=True)
    onehot = np.eye(vocab, dtype=np.float32)[target]
    want = (softmax - (1 - eps) * onehot - eps / vocab) * (target != 0)[..., None]
    np.testing.assert_allclose(grad, want, atol=1e-5)
    assert np.isfinite(crit(ms.Tensor(logits), ms.Tensor(target))[0].asnumpy())


def test_label_smoothed_gradient_of_both_sums():
    # the written-out backward must weigh loss_sum and nll_sum each by its own incoming gradient
    eps, vocab = 0.2, 7
    logits = RNG.normal(size=(2, 4, vocab)).astype(np.float32)
    target = np.array([[1, 6, 3, 0], [2, 2, 0, 0]], np.int32)
    crit = LabelSmoothedCrossEntropy(eps, 0)

    def objective(x):
        loss_sum, nll_sum, _ = crit(x, ms.Tensor(target))
        return 2.0 * loss_sum + 0.5 * nll_sum

    grad = ms.grad(objective)(ms.Tensor(logits)).asnumpy()
    p = softmax(logits)
    onehot = np.eye(vocab, dtype=np.float32)[target]
    keep = (target != 0)[..., None]
    want = keep * (2.0 * (p - (1 - eps) * onehot - eps / vocab) + 0.5 * (p - onehot))
    np.testing.assert_allclose(grad, want, atol=1e-5)
