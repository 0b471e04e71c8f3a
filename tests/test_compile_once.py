"""The training step compiles once per bucket shape, whatever the batch content or learning rate.

A regression check for throughput (not a timing test): a recompile per batch would cost
~30 s of a step's ~2 s on `small`.
"""
import mindspore as ms
import pytest

from trainer.config import load_config
from trainer.dataset import prepare
from trainer.parallel.context import ParallelContext
from trainer.parallel.plan import make_plan
from trainer.train import Trainer

pytestmark = pytest.mark.slow


def test_step_compiles_once_per_bucket_shape(data_dir, tmp_path):
    ms.set_context(mode=ms.GRAPH_MODE)
    cfg = load_config("tiny", [f"data.dir={data_dir}", f"train.out_dir={tmp_path}", "data.buckets=[16, 32, 64]"])
    corpus = prepare(cfg.data)
    trainer = Trainer(cfg, corpus, ParallelContext(make_plan(cfg, 1, "CPU"), "CPU"))
    split = trainer.train_split
    shapes = []
    for batch in trainer.batcher.iterate(0, 0):
        arrays = trainer.collate(batch, split.src_ids, split.tgt_ids)
        shapes.append(arrays[0].shape)
        trainer.train_step(*arrays)  # sets a new learning rate every step, as training does
    distinct = set(shapes)
    assert len(shapes) > len(distinct) >= 2  # some shape repeats with other content
    assert {s[1] for s in distinct} <= {16, 32, 64}
    assert trainer.step == len(shapes)  # one optimizer step per batch
    assert len(trainer.stepper.train_step.compile_cache) == len(distinct)


def test_packed_training_compiles_one_shape(data_dir, tmp_path):
    ms.set_context(mode=ms.GRAPH_MODE)
    cfg = load_config("tiny", [f"data.dir={data_dir}", f"train.out_dir={tmp_path}", "data.packing=true",
                               "data.pack_length=64", "data.max_tokens=512"])
    trainer = Trainer(cfg, prepare(cfg.data), ParallelContext(make_plan(cfg, 1, "CPU"), "CPU"))
    split = trainer.train_split
    batches = list(trainer.batcher.iterate(0, 0))
    assert len(batches) >= 3
    for batch in batches:
        arrays = trainer.collate(batch, split.src_ids, split.tgt_ids)
        assert len(arrays) == 7 and arrays[0].shape == (8, 64)
        trainer.train_step(*arrays)
    assert len(trainer.stepper.train_step.compile_cache) == 1
