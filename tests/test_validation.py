"""Validation compiles few graphs (the loss in the training's packed shape, decoding in at most two source
widths) and its numbers are those of one graph per length bucket."""
import mindspore as ms
import numpy as np
import pytest

from trainer.config import load_config
from trainer.data.batching import bucket_of
from trainer.dataset import prepare
from trainer.loop.tools import seed_everything
from trainer.parallel.context import ParallelContext
from trainer.parallel.plan import make_plan
from trainer.train import Trainer
from trainer.translation import Translator
from trainer.validation import LossBatches, Validator, decode_buckets

BUCKETS = [12, 16, 20, 24, 32, 48, 64, 128]


def test_decode_widths_keep_the_widest_and_pad_least():
    assert decode_buckets([5, 10, 11], BUCKETS) == [12]
    assert decode_buckets([5, 40], BUCKETS) == [12, 48]
    lengths = [10] * 120 + [14] * 100 + [18] * 50 + [40] * 3  # buckets 12, 16, 20 and 48 needed
    # padded slots with 48 kept: +12 -> 1440 + 150 * 48; +16 -> 1920 + 1600 + 50 * 48; +20 -> 270 * 20 (the least)
    assert decode_buckets(lengths, BUCKETS) == [20, 48]
    # three widths: {12, 20} 1440 + 3000 beats {16, 20} 1920 + 1600 + 1000 and {12, 16} (50 pairs at 48)
    assert decode_buckets(lengths, BUCKETS, shapes=3) == [12, 20, 48]
    assert decode_buckets([60] * 5, BUCKETS) == [64]
    assert decode_buckets([200], BUCKETS) == [128]  # longer than every bucket: the last (cut, as in training)


def test_packed_loss_batches_hold_every_pair_once_and_send_long_ones_to_buckets(data_dir, tmp_path):
    cfg = load_config("tiny", [f"data.dir={data_dir}", "data.packing=true", "data.pack_length=16",
                               "data.max_tokens=128"])
    src = [[5] * n for n in (3, 14, 15, 16, 30)]  # source + EOS: 4, 15, 16, 17 (too long), 31 (too long)
    tgt = [[6] * n for n in (2, 3, 15, 4, 5)]
    batches = list(LossBatches(cfg, src, tgt))
    packed = [arrays for is_packed, arrays in batches if is_packed]
    padded = [arrays for is_packed, arrays in batches if not is_packed]
    assert packed and all(a[0].shape == (8, 16) for a in packed)
    assert sum(int((a[2] != 0).sum()) for a in packed) == (2 + 1) + (3 + 1) + (15 + 1)  # targets + EOS, pairs 0-2
    assert sum(int((a[2] != 0).sum()) for a in padded) == (4 + 1) + (5 + 1)  # pairs 3 and 4, whole
    assert all(a[0].shape[1] >= 31 for a in padded)


@pytest.mark.slow
def test_validation_numbers_do_not_depend_on_its_graph_shapes(data_dir, tmp_path):
    """Packed loss batches == length buckets (loss sums); two decode widths == one per training bucket
    (the same greedy hypotheses, token for token), on a model trained a few updates."""
    ms.set_context(mode=ms.GRAPH_MODE)
    sets = [f"data.dir={data_dir}", f"train.out_dir={tmp_path}", "data.valid_limit=300", "model.dropout=0.0"]
    cfg = load_config("tiny", sets + ["data.packing=true", "data.pack_length=64", "data.max_tokens=1024"])
    corpus = prepare(cfg.data)
    seed_everything(cfg.train.seed)
    trainer = Trainer(cfg, corpus, ParallelContext(make_plan(cfg, 1, "CPU"), "CPU"))
    for batch in trainer.batcher.epoch(0)[:20]:
        trainer.train_step(*trainer.batch_arrays(batch))
    packed = Validator(cfg, trainer.model, corpus)
    buckets = Validator(load_config("tiny", sets + ["data.packing=false"]), trainer.model, corpus)
    assert any(p for p, _ in packed.batches) and not any(p for p, _ in buckets.batches)
    trainer.model.set_train(False)
    sums = packed.loss_sums()
    assert sums[2] > 1000
    np.testing.assert_allclose(sums, buckets.loss_sums(), rtol=2e-6)

    widths = packed.translator.buckets
    assert len(widths) == 2, widths
    every = Translator(trainer.model, corpus.src_vocab, corpus.tgt_vocab, cfg.data.buckets, 1,
                       cfg.eval.length_penalty, cfg.eval.max_len_a, cfg.eval.max_len_b, cfg.eval.batch_size)
    assert len({bucket_of(len(s) + 1, every.buckets) for s in packed.src_ids}) > 2
    ours, theirs = packed.translator.translate_ids(packed.src_ids), every.translate_ids(packed.src_ids)
    assert sum(map(len, ours)) > 2 * len(ours)  # real output, not empty hypotheses
    assert ours == theirs
