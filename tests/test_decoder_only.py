"""The decoder-only model (issue 18, first part): causal, cached decoding equals recomputation, packed rows
keep sequences apart, the layout table covers it, and parameter counts from configs equal the built models'."""
import numpy as np
import mindspore as ms
import pytest
from mindspore import ops

from model import ModelConfig, Transformer
from model.decoder_only import DecoderOnly
from model.parallel.layout import split_axes
from model.size import decoder_only_parameters, encoder_decoder_parameters

VOCAB = 50


@pytest.fixture(autouse=True)
def pynative():
    ms.set_context(mode=ms.PYNATIVE_MODE)


def config(pre_norm=True, **kw):
    base = dict(encoder_layers=1, decoder_layers=2, d_model=32, n_heads=4, d_ff=64, dropout=0.0,
                pre_norm=pre_norm, max_positions=64)
    return ModelConfig(**{**base, **kw})


def make_model(pre_norm=True, seed=0):
    ms.set_seed(seed)
    model = DecoderOnly(config(pre_norm), VOCAB, pad_id=0)
    model.set_train(False)
    return model


def tokens(shape, seed=0):
    return np.random.default_rng(seed).integers(4, VOCAB, size=shape).astype(np.int32)


@pytest.mark.parametrize("pre_norm", [True, False])
def test_a_later_token_never_changes_earlier_outputs(pre_norm):
    model = make_model(pre_norm)
    seq = tokens((2, 12))
    changed = seq.copy()
    changed[:, 7:] = tokens((2, 5), seed=1)
    a, b = model(ms.Tensor(seq)).asnumpy(), model(ms.Tensor(changed)).asnumpy()
    np.testing.assert_allclose(a[:, :7], b[:, :7], rtol=0, atol=1e-6)
    assert not np.allclose(a[:, 7:], b[:, 7:], atol=1e-3)


@pytest.mark.parametrize("pre_norm", [True, False])
def test_cached_decoding_equals_full_recomputation(pre_norm):
    model = make_model(pre_norm)
    seq = tokens((3, 10))
    want = ops.log_softmax(model(ms.Tensor(seq)), -1).asnumpy()  # [B, L, V]
    self_k, self_v = model.start_decoding(3, 16)
    for t in range(seq.shape[1]):
        lprobs, self_k, self_v = model.decode_step(ms.Tensor(seq[:, t:t + 1]), ms.Tensor(t, ms.int32),
                                                   self_k, self_v)
        np.testing.assert_allclose(lprobs.asnumpy(), want[:, t], atol=2e-5, err_msg=f"position {t}")


def test_packed_sequences_do_not_see_each_other():
    model = make_model()
    first, second = tokens((1, 5)), tokens((1, 4), seed=2)
    row = np.concatenate([first, second, np.zeros((1, 3), np.int32)], 1)
    seg = np.array([[1] * 5 + [2] * 4 + [0] * 3], np.int32)
    pos = np.array([list(range(5)) + list(range(4)) + [0] * 3], np.int32)
    packed = model(ms.Tensor(row), ms.Tensor(seg), ms.Tensor(pos)).asnumpy()
    np.testing.assert_allclose(packed[:, :5], model(ms.Tensor(first)).asnumpy(), atol=2e-5)
    np.testing.assert_allclose(packed[:, 5:9], model(ms.Tensor(second)).asnumpy(), atol=2e-5)


def test_the_parallel_layout_table_covers_the_decoder_only_model():
    axes = split_axes(make_model())
    assert axes["embed.embedding_table"] == 0  # vocabulary rows (tied output weight too)
    for i in range(2):
        assert axes[f"layers.{i}.self_attn.w_q.weight"] == 0 and axes[f"layers.{i}.self_attn.w_o.weight"] == 1
        assert axes[f"layers.{i}.ffn.w1.weight"] == 0 and axes[f"layers.{i}.ffn.w2.weight"] == 1


def built_size(model):
    return sum(int(np.prod(p.shape)) for p in model.trainable_params())


@pytest.mark.parametrize("pre_norm", [True, False])
def test_parameter_counts_from_the_config_equal_the_built_models(pre_norm):
    cfg = config(pre_norm)
    assert decoder_only_parameters(cfg, VOCAB) == built_size(DecoderOnly(cfg, VOCAB, 0))
    for share, (src, tgt) in ((True, (VOCAB, VOCAB)), (False, (VOCAB, VOCAB + 6))):
        shaped = config(pre_norm, encoder_layers=2, share_embeddings=share)
        assert encoder_decoder_parameters(shaped, src, tgt) == built_size(Transformer(shaped, src, tgt, 0))
