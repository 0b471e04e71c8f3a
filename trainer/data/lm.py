"""Causal language modelling on prepared token files (data.source=tokens, data.objective=causal_lm).

    prepare_lm(cfg)   the train and valid directories of `mindrun data prepare`, opened and checked to share
                      one tokenizer (LmCorpus)
    LmBatcher         global batches of `data.max_tokens // data.pack_length` samples in the seeded global order
                      (token_files.GlobalOrder); each data-parallel rank reads only its contiguous share of rows
    lm_rows(...)      a rank's rows as the 7 arrays of a packed batch (trainer/data/packing.lay_out's order)

A sample is `pack_length` consecutive ids of the document stream and their next ids (Megatron's GPT dataset);
its segment ids restart after every end-of-document id, so attention stays inside a document. The model
reads it through the decoder-only model's packed view (model/decoder_only.py): the source block is one
padding slot (segment 0, attended by nothing), the decoder input is the sample, the decoder target its next
ids, with the sample's segments and positions. The step, the loss, the parallel layouts, accumulation and
checkpoints are then the translation run's, unchanged. The loss covers every target (id 0 is the padding id
of mindrun's tokenizers and never a token; a Llama tokenizer's id 0, <unk>, is never produced with byte
fallback).
"""
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, Optional, Tuple

import numpy as np

from trainer.data.token_files import GlobalOrder, PrepareError, TokenDataset, open_train_and_valid, rank_rows
from trainer.data.tokenizer import PAD, SentencePieceVocab
from trainer.parallel.data import RankRows


@dataclass
class LmCorpus:
    """The prepared training and validation corpora and their one tokenizer."""

    train: TokenDataset
    valid: TokenDataset
    vocab: SentencePieceVocab

    @property
    def src_vocab(self) -> SentencePieceVocab:  # one vocabulary: the trainer's two sides are the same
        return self.vocab

    @property
    def tgt_vocab(self) -> SentencePieceVocab:
        return self.vocab

    def copy_vocab_to(self, dest: Path) -> None:
        """The tokenizer into a run directory (as its joint vocabulary), so its checkpoints stand alone."""
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy2(self.train.dir / "tokenizer.model", dest / "joint.model")


def prepare_lm(data) -> LmCorpus:
    """Open `data.train` and `data.valid` (DataConfig) as samples of `data.pack_length`; both must have been
    prepared with the same tokenizer."""
    train, valid = open_train_and_valid(data.train, data.valid, lambda path: TokenDataset(path, data.pack_length),
                                        lambda dataset: dataset.manifest)
    for key, d in (("data.train", train), ("data.valid", valid)):
        if len(d) == 0:
            raise PrepareError(f"{key}={d.dir}: {d.count} tokens make no sample of data.pack_length "
                               f"{data.pack_length}")
    return LmCorpus(train, valid, SentencePieceVocab(train.dir / "tokenizer.model"))


@dataclass(frozen=True)
class LmBatch:
    """Global batch `index` of `epoch` (what a checkpoint's position counts)."""

    epoch: int
    index: int


class LmBatcher:
    """Global batches of `global_rows` samples in the seeded global order; this rank reads share `share` of
    `shares` (its data-parallel rank; (1, 0) when every rank takes the whole batch). The order, the epoch's
    length and so a checkpoint's position do not depend on the number of ranks."""

    def __init__(self, dataset: TokenDataset, global_rows: int, seed: int, shares: int = 1, share: int = 0,
                 limit: Optional[int] = None):
        if global_rows % shares:
            raise ValueError(f"a batch of {global_rows} rows does not split over {shares} data-parallel ranks")
        self.dataset, self.global_rows, self.shares, self.share = dataset, global_rows, shares, share
        samples = min(len(dataset), limit) if limit else len(dataset)  # data.train_limit: the first samples
        self.order = GlobalOrder(samples, seed)
        if self.order.batches(global_rows) == 0:
            raise PrepareError(f"{dataset.dir}: {samples} samples of {dataset.length} ids, fewer than one batch "
                               f"of {global_rows} rows; lower data.max_tokens or use a larger corpus")

    def __len__(self) -> int:
        """Global batches per epoch (a last partial one is dropped)."""
        return self.order.batches(self.global_rows)

    def batches_in(self, epoch: int) -> int:
        """Batches of `epoch` (every epoch has the same count)."""
        return len(self)

    def iterate(self, epoch: int, start: int = 0) -> Iterator[LmBatch]:
        """Batches of `epoch` from position `start` on."""
        return (LmBatch(epoch, i) for i in range(start, len(self)))

    def rows(self, batch: LmBatch) -> np.ndarray:
        """The sample indices this rank reads for `batch`."""
        return rank_rows(self.order, batch.epoch, batch.index, self.global_rows, self.shares, self.share)

    def collate(self, batch: LmBatch) -> RankRows:
        """This rank's rows of `batch`, read from the token file, as a packed batch's 7 arrays."""
        return lm_rows(self.dataset, self.rows(batch), self.global_rows * self.dataset.length)


def lm_rows(dataset: TokenDataset, indices, global_targets: int) -> RankRows:
    """Samples `indices` as (source, decoder input, decoder target, source segments, target segments, source
    positions, target positions) [rows, *] int32: a one-slot padding source, then the samples."""
    return RankRows(as_packed(dataset.rows(indices)), global_targets)


def as_packed(rows: Dict[str, np.ndarray]) -> Tuple[np.ndarray, ...]:
    """Language-model rows (TokenDataset.rows: inputs, targets, segments, positions, each [rows, L]) -> the
    decoder-only model's packed translation view (module docstring)."""
    pad = np.full((rows["inputs"].shape[0], 1), PAD, np.int32)
    none = np.zeros_like(pad)
    return pad, rows["inputs"], rows["targets"], none, rows["segments"], none, rows["positions"]
