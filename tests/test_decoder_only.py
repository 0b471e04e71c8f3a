"""The decoder-only model (issue 18): causal, packed rows keep sequences apart, the translation view is the language
model on source + target, the layout table covers it, and parameter counts from configs equal the built models'.
Cached decoding and search against recomputation: tests/test_decoding.py, for both architectures."""
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


# Llama's block (issue 33): rotary positions must follow per-segment positions in packed rows, GQA share heads
LLAMA = dict(arch="decoder_only", norm="rmsnorm", positions="rotary", n_kv_heads=2, bias=False, share_embeddings=False,
             scale_embeddings=False, ffn="swiglu")
BLOCKS = pytest.mark.parametrize("options", [{}, LLAMA], ids=["gpt", "llama"])


def make_model(pre_norm=True, seed=0, **options):
    ms.set_seed(seed)
    model = DecoderOnly(config(pre_norm, **options), VOCAB, pad_id=0)
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
    a, b = model.lm_logits(ms.Tensor(seq)).asnumpy(), model.lm_logits(ms.Tensor(changed)).asnumpy()
    np.testing.assert_allclose(a[:, :7], b[:, :7], rtol=0, atol=1e-6)
    assert not np.allclose(a[:, 7:], b[:, 7:], atol=1e-3)


@BLOCKS
def test_packed_sequences_do_not_see_each_other(options):
    model = make_model(**options)
    first, second = tokens((1, 5)), tokens((1, 4), seed=2)
    row = np.concatenate([first, second, np.zeros((1, 3), np.int32)], 1)
    seg = np.array([[1] * 5 + [2] * 4 + [0] * 3], np.int32)
    pos = np.array([list(range(5)) + list(range(4)) + [0] * 3], np.int32)
    packed = model.lm_logits(ms.Tensor(row), ms.Tensor(seg), ms.Tensor(pos)).asnumpy()
    np.testing.assert_allclose(packed[:, :5], model.lm_logits(ms.Tensor(first)).asnumpy(), atol=2e-5)
    np.testing.assert_allclose(packed[:, 5:9], model.lm_logits(ms.Tensor(second)).asnumpy(), atol=2e-5)


def test_llama_options_count_and_split_like_the_built_model():
    """RMSNorm (gamma only), GQA's narrower key/value projections, no biases and the untied output layer are
    counted by model/size.py as built, and the layout table splits w_k/w_v (whole key/value heads) and out_proj."""
    from model.parallel.layout import split_axis_of
    from model.size import replicated_parameters

    cfg = config(True, **LLAMA)
    model = make_model(**LLAMA)
    assert decoder_only_parameters(cfg, VOCAB) == built_size(model)
    shapes = {p.name: p.shape for p in model.trainable_params()}
    assert shapes["layers.0.self_attn.w_k.weight"] == (2 * 8, 32) and "layers.0.self_attn.w_q.bias" not in shapes
    assert shapes["out_proj.weight"] == (VOCAB, 32) and "layers.0.norm1.norm.beta" not in shapes
    axes = split_axes(model)
    assert axes["layers.0.self_attn.w_k.weight"] == 0 and axes["out_proj.weight"] == 0
    assert all(split_axis_of(name) == axes.get(name) for name in shapes)  # the name-only lookup import-hf uses
    assert replicated_parameters(cfg) == sum(int(np.prod(s)) for n, s in shapes.items() if n not in axes)
    # the encoder-decoder takes the same block options (rotary positions excepted)
    options = {k: v for k, v in LLAMA.items() if k not in ("arch", "positions", "share_embeddings")}
    shaped = config(True, encoder_layers=2, **options)
    built = Transformer(shaped, VOCAB, VOCAB, 0)
    assert encoder_decoder_parameters(shaped, VOCAB, VOCAB) == built_size(built)
    assert replicated_parameters(shaped) == sum(int(np.prod(p.shape)) for p in built.trainable_params()
                                                if p.name not in split_axes(built))


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


def pairs_case():
    """Three (source, target input) pairs of different lengths: sources end with EOS (3), targets start with BOS (2)."""
    rng = np.random.default_rng(7)
    lengths = [(5, 4), (3, 6), (6, 2)]
    return [(np.append(rng.integers(4, VOCAB, n - 1), 3).astype(np.int32),
             np.insert(rng.integers(4, VOCAB, m - 1), 0, 2).astype(np.int32)) for n, m in lengths]


def padded(rows, width):
    out = np.zeros((len(rows), width), np.int32)
    for i, row in enumerate(rows):
        out[i, :len(row)] = row
    return out


@BLOCKS
def test_translation_is_the_language_model_on_source_then_target(options):
    """Padded (src, tgt_in) batches give, at the target positions, the language model's logits on the gap-free
    sequence source + target: padding never moves a position or leaks into attention."""
    model, pairs = make_model(**options), pairs_case()
    got = model(ms.Tensor(padded([p[0] for p in pairs], 8)), ms.Tensor(padded([p[1] for p in pairs], 7))).asnumpy()
    for i, (src, tgt) in enumerate(pairs):
        lm = model.lm_logits(ms.Tensor(np.concatenate([src, tgt])[None])).asnumpy()[0]
        np.testing.assert_allclose(got[i, :len(tgt)], lm[len(src):], atol=2e-5, err_msg=f"pair {i}")


@BLOCKS
def test_packed_translation_rows_equal_padded_ones(options):
    model, pairs = make_model(**options), pairs_case()
    src_row, tgt_row = np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs])
    src_seg = np.concatenate([[i + 1] * len(p[0]) for i, p in enumerate(pairs)]).astype(np.int32)
    tgt_seg = np.concatenate([[i + 1] * len(p[1]) for i, p in enumerate(pairs)]).astype(np.int32)
    src_pos = np.concatenate([np.arange(len(p[0])) for p in pairs]).astype(np.int32)
    tgt_pos = np.concatenate([np.arange(len(p[1])) for p in pairs]).astype(np.int32)
    pad_s, pad_t = 2, 1  # a packed row's tail is padding (segment 0)
    row = lambda a, n: ms.Tensor(np.append(a, np.zeros(n, np.int32))[None])  # noqa: E731
    packed = model(row(src_row, pad_s), row(tgt_row, pad_t), row(src_seg, pad_s), row(tgt_seg, pad_t),
                   row(src_pos, pad_s), row(tgt_pos, pad_t)).asnumpy()[0]
    single = model(ms.Tensor(padded([p[0] for p in pairs], 8)), ms.Tensor(padded([p[1] for p in pairs], 7))).asnumpy()
    start = 0
    for i, (_, tgt) in enumerate(pairs):
        np.testing.assert_allclose(packed[start:start + len(tgt)], single[i, :len(tgt)], atol=2e-5, err_msg=f"pair {i}")
        start += len(tgt)


def test_translation_targets_are_causal_and_read_the_source():
    model, pairs = make_model(), pairs_case()
    src, tgt = padded([p[0] for p in pairs], 8), padded([p[1] for p in pairs], 7)
    base = model(ms.Tensor(src), ms.Tensor(tgt)).asnumpy()
    later = tgt.copy()
    later[0, 2:4] = [9, 10]
    np.testing.assert_allclose(model(ms.Tensor(src), ms.Tensor(later)).asnumpy()[0, :2], base[0, :2], atol=1e-6)
    other_source = src.copy()
    other_source[0, 0] = 11 if src[0, 0] != 11 else 12
    assert not np.allclose(model(ms.Tensor(other_source), ms.Tensor(tgt)).asnumpy()[0, 0], base[0, 0], atol=1e-4)


OPTIONS = dict(ffn="swiglu", positions="learned")


@pytest.mark.parametrize("arch", ["decoder_only", "encoder_decoder"])
def test_swiglu_and_learned_positions_count_split_and_decode_like_the_defaults(arch):
    """The options change the blocks, not the contracts: counted sizes, the layout table (SwiGLU's gate and
    value projections by columns), and cached decoding equal to recomputation."""
    from model import build

    cfg = config(arch=arch, **OPTIONS)
    ms.set_seed(3)
    model = build(cfg, VOCAB, VOCAB, 0)
    model.set_train(False)
    if arch == "decoder_only":
        assert decoder_only_parameters(cfg, VOCAB) == built_size(model)
    else:
        assert encoder_decoder_parameters(cfg, VOCAB, VOCAB) == built_size(model)
    axes = split_axes(model)
    stack = "layers" if arch == "decoder_only" else "decoder"
    assert axes[f"{stack}.0.ffn.w1.weight"] == 0 and axes[f"{stack}.0.ffn.w3.weight"] == 0
    assert axes[f"{stack}.0.ffn.w2.weight"] == 1 and "positions.table" not in axes  # the table is replicated
    assert "positions.table" in {p.name for p in model.trainable_params()}
    src, tgt = padded([p[0] for p in pairs_case()], 8), padded([p[1] for p in pairs_case()], 7)
    want = ops.log_softmax(model(ms.Tensor(src), ms.Tensor(tgt)), -1).asnumpy()
    state = list(model.start_decoding(ms.Tensor(src), 8))
    for t in range(tgt.shape[1]):
        lprobs, state[3], state[4] = model.decode_step(ms.Tensor(tgt[:, t:t + 1]), ms.Tensor(t, ms.int32), *state)
        live = tgt[:, t] != 0
        np.testing.assert_allclose(lprobs.asnumpy()[live], want[live, t], atol=2e-5, err_msg=f"position {t}")
