"""Incremental decoding with cached keys/values equals recomputing the whole decoder, for both architectures
(the decoder-only model reads the source as its prompt: model/decoder_only.py)."""
import itertools

import numpy as np
import mindspore as ms
import pytest
from mindspore import ops

from model import ARCHITECTURES, ModelConfig, build
from model.search import BOS_ID, EOS_ID, SequenceGenerator


@pytest.fixture(autouse=True)
def pynative():
    ms.set_context(mode=ms.PYNATIVE_MODE)


ARCHS = sorted(ARCHITECTURES)


# the decoder-only model with Llama's block (issue 33): rotary positions of padded prompts, GQA caches
LLAMA = dict(norm="rmsnorm", positions="rotary", n_kv_heads=2, bias=False, scale_embeddings=False, ffn="swiglu")


def make_model(pre_norm=False, share=True, seed=0, vocab=50, arch="encoder_decoder", **options):
    ms.set_seed(seed)
    if arch == "llama":
        arch, options = "decoder_only", {**LLAMA, **options}
    cfg = ModelConfig(arch=arch, encoder_layers=2, decoder_layers=2, d_model=32, n_heads=4, d_ff=64, dropout=0.0,
                      pre_norm=pre_norm, share_embeddings=share, max_positions=64, **options)
    model = build(cfg, vocab, vocab, 0)
    model.set_train(False)
    return model


def full_lprobs(model, src, prefix):
    logits = model(ms.Tensor(src), ms.Tensor(prefix))
    return ops.log_softmax(logits, -1).asnumpy()


@pytest.mark.parametrize("arch", [*ARCHS, "llama"])
@pytest.mark.parametrize("pre_norm, share", [(False, True), (True, False)])
def test_cached_step_equals_full_recomputation(pre_norm, share, arch):
    model = make_model(pre_norm, share, arch=arch)
    rng = np.random.default_rng(0)
    src = rng.integers(4, 50, size=(3, 7)).astype(np.int32)
    src[1, 5:] = 0  # padding in one source
    tgt = np.concatenate([np.full((3, 1), BOS_ID), rng.integers(4, 50, size=(3, 5))], 1).astype(np.int32)
    want = full_lprobs(model, src, tgt)  # [B, 6, V]
    state = model.start_decoding(ms.Tensor(src), 10)
    src_bias, ck, cv, sk, sv = state
    for t in range(tgt.shape[1]):
        lp, sk, sv = model.decode_step(ms.Tensor(tgt[:, t:t + 1]), ms.Tensor(t, ms.int32), src_bias, ck, cv, sk, sv)
        np.testing.assert_allclose(lp.asnumpy(), want[:, t], rtol=1e-4, atol=1e-5)


def reference_greedy(model, src_row, max_len):
    """The course's loop: re-run the whole decoder over the growing prefix for each token."""
    out = [BOS_ID]
    for _ in range(max_len):
        lp = full_lprobs(model, src_row[None], np.array([out], np.int32))
        nxt = int(lp[0, -1].argmax())
        if nxt == EOS_ID:
            break
        out.append(nxt)
    return out[1:]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("mode", [ms.PYNATIVE_MODE, ms.GRAPH_MODE])
def test_greedy_search_matches_full_recomputation(mode, arch):
    model = make_model(arch=arch)
    ms.set_context(mode=mode)  # training and evaluation run the search in graph mode
    rng = np.random.default_rng(3)
    src = rng.integers(4, 50, size=(4, 6)).astype(np.int32)
    src[2, 4:] = 0  # a shorter source: the decoder-only model's positions start after it
    got = SequenceGenerator(model, beam=1).generate(src, [8] * 4, cache_len=9)
    ms.set_context(mode=ms.PYNATIVE_MODE)
    for i in range(4):
        assert got[i] == reference_greedy(model, src[i][src[i] != 0], 8)


def sequence_score(model, src_row, tokens):
    prefix = np.array([[BOS_ID] + tokens], np.int32)
    lp = full_lprobs(model, src_row[None], prefix)[0]
    targets = tokens + [EOS_ID]
    return float(sum(lp[t, tok] for t, tok in enumerate(targets)))


def brute_force_best(model, src_row, max_len, vocab):
    """Best hypothesis over every output sequence, scored the way the beam search scores them:
    sum of log-probs (EOS included when emitted) / (length + 1)."""
    best = (-np.inf, None)
    tokens = [t for t in range(vocab) if t != EOS_ID]
    for n in range(max_len + 1):
        seqs = [list(p) for p in itertools.product(tokens, repeat=n)]
        prefix = np.array([[BOS_ID] + q for q in seqs], np.int32)  # all sequences of length n at once
        lp = full_lprobs(model, np.repeat(src_row[None], len(seqs), 0), prefix)
        for row, toks in enumerate(seqs):
            total = float(sum(lp[row, t, tok] for t, tok in enumerate(toks)))
            if n < max_len:  # ended by EOS; at the limit the hypothesis is cut without one
                total += float(lp[row, n, EOS_ID])
            score = total / (n + 1)
            if score > best[0]:
                best = (score, toks)
    return best[1]


@pytest.fixture(scope="module", params=ARCHS)
def exact_case(request):
    """A tiny model, two sources, and the brute-force best outputs (computed once per architecture)."""
    ms.set_context(mode=ms.PYNATIVE_MODE)
    vocab, max_len = 6, 3
    model = make_model(seed=2, vocab=vocab, arch=request.param)
    src = np.array([[4, 5, 5, 4], [5, 4, 0, 0]], np.int32)  # two different sources, one padded
    return model, src, max_len, [brute_force_best(model, src[i][src[i] != 0], max_len, vocab) for i in range(2)]


@pytest.mark.parametrize("mode", [ms.PYNATIVE_MODE, ms.GRAPH_MODE])
def test_wide_beam_search_is_exact(mode, exact_case):
    """With a beam wider than every prefix set, beam search must find the brute-force optimum."""
    model, src, max_len, want = exact_case
    ms.set_context(mode=mode)
    got = SequenceGenerator(model, beam=100, length_penalty=1.0).generate(src, [max_len] * 2, cache_len=max_len + 1)
    assert got == want
