"""Validation during training: loss and BLEU on the valid split (model selection never sees test).

Under data parallelism the split is shared out: data-parallel rank r of d decodes every d-th
sentence in length order (so every rank gets a similar mix of lengths), the loss sums and the
hypotheses' token ids are summed over the data-parallel group, and every rank scores the whole
split (the same numbers everywhere, so every rank makes the same best-checkpoint decision).
Tensor-parallel peers share a data-parallel rank, so they decode the same sentences together.
"""
import math
from collections import Counter
from itertools import combinations
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import mindspore as ms
from mindspore import nn

from model.loss import LabelSmoothedCrossEntropy
from model.tokens import PAD
from trainer.config import RunConfig
from trainer.data.batching import TokenBatcher, bucket_of, collate, pair_length
from trainer.data.packing import PackedBatcher, collate_packed, side_lengths
from trainer.dataset import Corpus, Split
from trainer.parallel.context import ParallelContext
from trainer.parallel.host_sum import group_sum
from trainer.scoring import score
from trainer.translation import Translator


class LossSums(nn.Cell):
    """Teacher-forced loss sums for validation: (loss_sum, nll_sum, n_tokens)."""

    def __init__(self, model, criterion):
        super().__init__(auto_prefix=False)
        self.model, self.criterion = model, criterion

    def construct(self, src, tgt_in, tgt_out):
        return self.criterion(self.model(src, tgt_in), tgt_out)


class PackedLossSums(nn.Cell):
    """Teacher-forced loss sums of packed rows (a causal_lm batch: trainer/data/lm.py)."""

    def __init__(self, model, criterion):
        super().__init__(auto_prefix=False)
        self.model, self.criterion = model, criterion

    def construct(self, src, tgt_in, tgt_out, src_seg, tgt_seg, src_pos, tgt_pos):
        return self.criterion(self.model(src, tgt_in, src_seg, tgt_seg, src_pos, tgt_pos), tgt_out)


class LmValidator:
    """Validation loss and perplexity of a language model on data.valid (causal_lm runs).

    Every sample of the valid corpus once, in order, in batches of the training's global rows; each
    data-parallel rank reads its contiguous share of each batch (the last batch's missing rows are padding,
    which the loss ignores) and the sums are summed over the data-parallel group.
    """

    def __init__(self, cfg: RunConfig, model, dataset, shares: int = 1, share: int = 0, group: Optional[str] = None,
                 limit: Optional[int] = None, ctx: Optional[ParallelContext] = None):
        self.model, self.dataset = model, dataset
        self.loss = PackedLossSums(model, LabelSmoothedCrossEntropy(cfg.optim.label_smoothing, PAD))
        self.global_rows = cfg.data.max_tokens // cfg.data.pack_length
        self.shares, self.share = shares, share
        self.samples = min(len(dataset), limit) if limit else len(dataset)
        self.sum = group_sum(ctx, group) if shares > 1 else None

    def run(self) -> Dict[str, float]:
        """One pass over the valid samples: loss, nll and perplexity per target token."""
        from trainer.data.lm import as_packed

        self.model.set_train(False)
        total = np.zeros(3)
        per = self.global_rows // self.shares
        length = self.dataset.length
        for start in range(0, self.samples, self.global_rows):
            first = start + self.share * per
            mine = np.arange(first, min(first + per, self.samples))
            rows = {k: np.zeros((per, length), np.int32) for k in ("inputs", "targets", "segments", "positions")}
            if len(mine):
                for k, v in self.dataset.rows(mine).items():
                    rows[k][:len(mine)] = v
            arrays = as_packed(rows)
            total += [float(x.asnumpy()) for x in self.loss(*map(ms.Tensor, arrays))]
        if self.sum is not None:
            total = self.sum(total.astype(np.float32)).astype(np.float64)
        self.model.set_train(True)
        return {**per_token(total), "tokens": int(total[2])}


class Validator:
    """Validation loss, perplexity, BLEU and chrF of the model on the valid split."""

    def __init__(self, cfg: RunConfig, model, corpus: Corpus, ctx: Optional[ParallelContext] = None):
        self.cfg, self.model, self.corpus = cfg, model, corpus
        self.split: Split = corpus.splits["valid"]
        criterion = LabelSmoothedCrossEntropy(cfg.optim.label_smoothing, PAD)
        self.loss, self.packed_loss = LossSums(model, criterion), PackedLossSums(model, criterion)
        shares = ctx.plan.data_parallel if ctx is not None and ctx.dp_group else 1
        lengths = self.split.lengths()
        self.share = share_of(lengths, ctx.dp_rank if shares > 1 else 0, shares)
        self.sum = group_sum(ctx, ctx.dp_group) if shares > 1 else None
        self.src_ids = [self.split.src_ids[i] for i in self.share]
        self.tgt_ids = [self.split.tgt_ids[i] for i in self.share]
        self.batches = LossBatches(cfg, self.src_ids, self.tgt_ids)
        if shares > 1:
            print(f"validation: data-parallel rank {ctx.dp_rank} decodes {len(self.share)} of "
                  f"{len(lengths)} sentences", flush=True)
        # every rank decodes in the same widths (a compiled graph each), chosen for the whole split
        widths = decode_buckets([len(s) + 1 for s in self.split.src_ids], cfg.data.buckets)
        self.translator = Translator(model, corpus.src_vocab, corpus.tgt_vocab, widths,
                                     cfg.eval.train_beam, cfg.eval.length_penalty, cfg.eval.max_len_a,
                                     cfg.eval.max_len_b, cfg.eval.batch_size)

    def run(self) -> Dict[str, float]:
        """One pass over the valid split: loss sums in batches, then greedy (train_beam) translations."""
        self.model.set_train(False)
        total = self.loss_sums()
        mine = self.translator.translate_ids(self.src_ids)
        if self.sum is not None:
            total = self.sum(total.astype(np.float32)).astype(np.float64)
        hyps = [self.corpus.tgt_vocab.decode(h) for h in self._gather(mine)]
        refs = [t for _, t in self.split.pairs]
        scores = score(hyps, refs)
        self.model.set_train(True)
        return {**per_token(total), "bleu": scores["bleu"], "bleu_lowercase": scores["bleu_lowercase"],
                "chrf": scores["chrf"]}

    def loss_sums(self) -> np.ndarray:
        """(loss, nll, target tokens) summed over this rank's share, teacher-forced."""
        total = np.zeros(3)
        for packed, arrays in self.batches:
            cell = self.packed_loss if packed else self.loss
            total += [float(x.asnumpy()) for x in cell(*map(ms.Tensor, arrays))]
        return total

    def _gather(self, mine: List[List[int]]) -> List[List[int]]:
        """Every sentence's hypothesis ids, in split order, on every rank (a sum of zero-padded rows:
        AllGather over a sub-group does not run on the CPU)."""
        if self.sum is None:
            return mine
        # the longest output any sentence may get (+ EOS, + the length column): the same bound on every rank
        width = 2 + max(self.translator.max_output(len(s) + 1) for s in self.split.src_ids)
        table = np.zeros((len(self.split.src_ids), width), np.float32)  # token ids < 2^24: exact in float32
        for i, ids in zip(self.share, mine):
            table[i, 0] = len(ids)
            table[i, 1:1 + len(ids)] = ids
        table = self.sum(table).astype(np.int64)
        return [list(row[1:1 + row[0]]) for row in table]


def per_token(total: np.ndarray) -> Dict[str, float]:
    """Loss sums (loss, nll, target tokens) -> loss and nll per token and the perplexity."""
    n = max(total[2], 1.0)
    return {"loss": float(total[0] / n), "nll": float(total[1] / n), "ppl": math.exp(min(total[1] / n, 50))}


class LossBatches:
    """The validation loss's batches of some pairs, collated as they are read: (packed, arrays) each.

    With data.packing the pairs go into rows of the training's packed shape ([max_tokens // pack_length,
    pack_length]: one loss graph to compile instead of one per length bucket; each pair's loss is the one
    it has alone); pairs a row cannot hold whole, and every pair without packing, go in length buckets.
    """

    def __init__(self, cfg: RunConfig, src_ids, tgt_ids):
        data = cfg.data
        whole = list(range(len(src_ids)))
        self.parts = []  # (packed, batches, collate, sources, targets)
        if data.packing:
            src_len, tgt_len = side_lengths(src_ids, tgt_ids, data.pack_length + 1)
            fits = (src_len <= data.pack_length) & (tgt_len <= data.pack_length)
            whole = [i for i in whole if not fits[i]]
            kept = np.flatnonzero(fits)
            if len(kept):
                packer = PackedBatcher(src_len[kept], tgt_len[kept], data.pack_length, data.max_tokens, seed=0,
                                       shuffle=False)
                self.parts.append((True, packer.epoch(0), collate_packed, [src_ids[i] for i in kept],
                                   [tgt_ids[i] for i in kept]))
        if whole:
            src, tgt = [src_ids[i] for i in whole], [tgt_ids[i] for i in whole]
            batcher = TokenBatcher([pair_length(a, b) for a, b in zip(src, tgt)], data.buckets, data.max_tokens,
                                   seed=0, shuffle=False)
            self.parts.append((False, batcher.epoch(0), collate, src, tgt))

    def __iter__(self) -> Iterator[Tuple[bool, Tuple[np.ndarray, ...]]]:
        for packed, batches, collate_fn, src, tgt in self.parts:
            for batch in batches:
                yield packed, collate_fn(batch, src, tgt)


def decode_buckets(lengths: Sequence[int], buckets: Sequence[int], shapes: int = 2) -> List[int]:
    """At most `shapes` of the bucket widths to decode source lengths `lengths` in: the choice with the fewest
    padded source slots in all (each width is a compiled pair of graphs; validation's first pass compiled one
    per training bucket, most of its time). The widest needed bucket is always kept."""
    needed = sorted({bucket_of(n, buckets) for n in lengths})
    if len(needed) <= shapes:
        return needed
    widest, counts = needed[-1], Counter(bucket_of(n, buckets) for n in lengths)

    def slots(widths) -> int:
        return sum(c * min(w for w in widths if w >= b) for b, c in counts.items())

    return min((sorted(c) + [widest] for c in combinations(needed[:-1], shapes - 1)), key=slots)


def share_of(lengths: Sequence[int], rank: int, shares: int) -> List[int]:
    """The split's indices data-parallel rank `rank` of `shares` validates: every shares-th sentence in
    length order, returned in split order."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    return sorted(int(i) for i in order[rank::shares])
