"""Sequence packing: the packer's invariants, and a packed batch trains exactly as its padded twin."""
import numpy as np
import mindspore as ms
import pytest
from mindspore import nn

from model.config import ModelConfig
from model.transformer import Transformer
from trainer.config import load_config
from trainer.data.batching import Batch, collate
from trainer.data.packing import PackedBatcher, collate_packed, side_lengths
from trainer.data.tokenizer import BOS, EOS, PAD
from trainer.dataset import prepare
from trainer.build import assemble_step
from trainer.loop.tools import seed_everything
from trainer.parallel.context import ParallelContext
from trainer.parallel.plan import make_plan
from trainer.train import Trainer

RNG = np.random.default_rng(0)


def random_pairs(n, longest, vocab=50, rng=RNG):
    src = [list(rng.integers(4, vocab, rng.integers(1, longest))) for _ in range(n)]
    tgt = [list(rng.integers(4, vocab, rng.integers(1, longest))) for _ in range(n)]
    return src, tgt


def test_every_pair_is_placed_once_and_rows_never_overflow():
    # translation-like lengths: the target about as long as the source; a few cut to the row length
    src_len = RNG.integers(1, 36, 500)
    tgt_len = np.clip(src_len + RNG.integers(-3, 4, 500), 1, None)
    src = [list(RNG.integers(4, 50, n)) for n in src_len]
    tgt = [list(RNG.integers(4, 50, n)) for n in tgt_len]
    ls, lt = side_lengths(src, tgt, 32)
    batcher = PackedBatcher(ls, lt, length=32, max_tokens=256, seed=3)
    seen = []
    for batch in batcher.epoch(0):
        assert (batch.rows, batch.length) == (8, 32) and len(batch.members) <= 8
        for row in batch.members:
            assert sum(ls[i] for i in row) <= 32 and sum(lt[i] for i in row) <= 32
            seen.extend(row)
    assert sorted(seen) == list(range(500))
    # several sentences share a row, and far fewer slots are padding than when padding each pair to 32
    tokens = ls.sum() + lt.sum()
    packed_fill = tokens / (len(batcher.epoch(0)) * 8 * 32 * 2)
    padded_fill = tokens / (500 * 32 * 2)
    assert packed_fill > padded_fill + 0.1
    assert max(len(r) for b in batcher.epoch(0) for r in b.members) >= 3


def test_packing_is_a_function_of_seed_and_epoch_and_ranks_split_it():
    src, tgt = random_pairs(300, 30)
    ls, lt = side_lengths(src, tgt, 32)
    one = PackedBatcher(ls, lt, 32, 128, seed=1)
    assert one.epoch(2) == PackedBatcher(ls, lt, 32, 128, seed=1).epoch(2)
    assert one.epoch(2) != one.epoch(3)
    ranks = [PackedBatcher(ls, lt, 32, 128, seed=1, rank=r, world_size=3) for r in range(3)]
    counts = {len(r.epoch(2)) for r in ranks}
    assert counts == {ranks[0].batches_in(2)}  # equal counts (empty batches pad the last round)
    members = [i for r in ranks for b in r.epoch(2) for row in b.members for i in row]
    assert sorted(members) == list(range(300))
    assert list(one.iterate(2, 5)) == one.epoch(2)[5:]


def test_collate_packed_lays_out_tokens_segments_and_positions():
    src = [[10, 11], [12], [13, 14, 15]]
    tgt = [[20], [21, 22], [23]]
    ls, lt = side_lengths(src, tgt, 6)
    batch = PackedBatcher(ls, lt, 6, 12, seed=0, shuffle=False).epoch(0)[0]
    assert batch.members == ((0, 1), (2,))
    s, tin, tout, sseg, tseg, spos, tpos = collate_packed(batch, src, tgt)
    assert s.tolist() == [[10, 11, EOS, 12, EOS, PAD], [13, 14, 15, EOS, PAD, PAD]]
    assert tin.tolist() == [[BOS, 20, BOS, 21, 22, PAD], [BOS, 23, PAD, PAD, PAD, PAD]]
    assert tout.tolist() == [[20, EOS, 21, 22, EOS, PAD], [23, EOS, PAD, PAD, PAD, PAD]]
    assert sseg.tolist() == [[1, 1, 1, 2, 2, 0], [1, 1, 1, 1, 0, 0]]
    assert tseg.tolist() == [[1, 1, 2, 2, 2, 0], [1, 1, 0, 0, 0, 0]]
    assert spos.tolist() == [[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 0, 0]]
    assert tpos.tolist() == [[0, 1, 0, 1, 2, 0], [0, 1, 0, 0, 0, 0]]


def _tiny_model(seed=0):
    ms.set_seed(seed)
    cfg = ModelConfig(encoder_layers=2, decoder_layers=2, d_model=32, n_heads=4, d_ff=64, dropout=0.0,
                      attention_dropout=0.0, activation_dropout=0.0, max_positions=64, share_embeddings=False)
    return Transformer(cfg, 60, 50, PAD)


@pytest.mark.parametrize("mode", [ms.PYNATIVE_MODE, ms.GRAPH_MODE])
def test_packed_logits_equal_the_padded_batch_logits(mode):
    ms.set_context(mode=mode)
    src, tgt = random_pairs(12, 9, rng=np.random.default_rng(5))
    ls, lt = side_lengths(src, tgt, 24)
    packed = PackedBatcher(ls, lt, 24, 24 * 12, seed=0, shuffle=False).epoch(0)[0]
    assert packed.pairs == 12 and len(packed.members) < 12  # really packed
    model = _tiny_model()
    model.set_train(False)
    arrays = collate_packed(packed, src, tgt)
    logits_packed = model(*map(ms.Tensor, arrays[:2]), *map(ms.Tensor, arrays[3:])).asnumpy()
    pad_src, pad_tin, _ = collate(Batch(10, 12, np.arange(12)), src, tgt)
    logits_padded = model(ms.Tensor(pad_src), ms.Tensor(pad_tin)).asnumpy()
    tseg = arrays[4]
    for row, members in enumerate(packed.members):
        for seg, i in enumerate(members, start=1):
            cols = np.flatnonzero(tseg[row] == seg)
            np.testing.assert_allclose(logits_packed[row, cols], logits_padded[i, :len(cols)], rtol=1e-4, atol=1e-5)


def test_a_packed_step_makes_the_padded_steps_update():
    """Same loss sums and the same weights after one SGD step (lr 1: the weights move by the
    clipped gradient itself), packed or padded, in graph mode."""
    ms.set_context(mode=ms.GRAPH_MODE)
    src, tgt = random_pairs(10, 8, rng=np.random.default_rng(7))
    ls, lt = side_lengths(src, tgt, 20)
    packed = PackedBatcher(ls, lt, 20, 20 * 10, seed=0, shuffle=False).epoch(0)[0]
    results = []
    for arrays in (collate_packed(packed, src, tgt), collate(Batch(9, 10, np.arange(10)), src, tgt)):
        model = _tiny_model()
        step = assemble_step(model, nn.SGD(model.trainable_params(), learning_rate=1.0), 0.1, 1.0)
        r = step(*arrays)
        sums = [r.loss_sum, r.nll_sum, r.n_tokens, r.grad_norm]
        results.append((sums, {p.name: p.asnumpy() for p in model.trainable_params()}))
    (packed_sums, packed_w), (padded_sums, padded_w) = results
    start = {p.name: p.asnumpy() for p in _tiny_model().trainable_params()}
    assert max(np.abs(padded_w[n] - w).max() for n, w in start.items()) > 1e-3  # the step moved the weights
    np.testing.assert_allclose(packed_sums, padded_sums, rtol=1e-4)
    for name, w in padded_w.items():
        np.testing.assert_allclose(packed_w[name], w, rtol=1e-4, atol=1e-6, err_msg=name)


@pytest.mark.slow
def test_the_trainer_feeds_segments_and_positions_to_the_step(data_dir, tmp_path):
    """Trainer.train_step on a packed Multi30k batch gives the loss of the same pairs padded
    (same seed, same initial weights, dropout off): the packed arrays reach the model."""
    ms.set_context(mode=ms.GRAPH_MODE)
    corpus, members, sums = None, None, []
    for name, extra in (("packed", ["data.packing=true", "data.pack_length=64"]), ("padded", [])):
        cfg = load_config("tiny", [f"data.dir={data_dir}", f"train.out_dir={tmp_path / name}", *extra])
        corpus = corpus or prepare(cfg.data)
        seed_everything(cfg.train.seed)
        trainer = Trainer(cfg, corpus, ParallelContext(make_plan(cfg, 1, "CPU"), "CPU"))
        split = trainer.train_split
        if members is None:
            batch = trainer.batcher.epoch(0)[0]
            members = [i for row in batch.members for i in row]
            assert len(members) > len(batch.members)  # rows hold several sentences
            arrays = trainer.collate(batch, split.src_ids, split.tgt_ids)
        else:
            arrays = collate(Batch(64, len(members), np.array(members)), split.src_ids, split.tgt_ids)
        r = trainer.train_step(*arrays)
        sums.append((r.loss_sum, r.nll_sum, r.n_tokens))
    np.testing.assert_allclose(sums[0], sums[1], rtol=1e-4)
